// The authors gRPC client: a grpc-js client from authors.proto (loaded at run time, no code generation)
// over a mesh channel that discovers the authors endpoints, balances, and speaks mTLS to each.
import { createRequire } from "node:module";
import { type Client, loadPackageDefinition, type ServiceClientConstructor } from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import { createMeshGrpcChannel, meshClientArguments } from "@inmesh/grpc";
import type { Mesh } from "@inmesh/mesh";

export interface Author {
  id: number;
  name: string;
  /** The pod that answered. */
  replica: string;
  /** Who authors saw calling: web's mesh identity. */
  caller: string;
}

export interface AuthorsClient {
  getAuthor(id: number): Promise<Author>;
  close(): void;
}

type Callback<T> = (error: Error | null, value?: T) => void;
interface RawAuthorsClient extends Client {
  getAuthor(request: { id: number }, options: { deadline: number }, callback: Callback<Author>): void;
}

const CALL_TIMEOUT_MS = 5_000;

// The authors package ships its .proto; clients load the same file.
const protoPath = createRequire(import.meta.url).resolve("@inmesh-examples/authors/authors.proto");
const proto = loadPackageDefinition(loadSync(protoPath, { defaults: true })) as unknown as {
  bookshop: { authors: { v1: { Authors: ServiceClientConstructor } } };
};

export function createAuthorsClient(mesh: Mesh, target: string): AuthorsClient {
  if (!mesh.discovery) throw new Error("authors: the mesh has no destination controller to discover authors");
  const channel = createMeshGrpcChannel({ target, identity: mesh.identity, discovery: mesh.discovery });
  // Calls go through the mesh channel: mTLS to each endpoint's identity (see meshClientArguments).
  const client = new proto.bookshop.authors.v1.Authors(
    ...meshClientArguments(channel),
  ) as unknown as RawAuthorsClient;
  return {
    getAuthor(id) {
      return new Promise((resolve, reject) => {
        client.getAuthor({ id }, { deadline: Date.now() + CALL_TIMEOUT_MS }, (error, author) => {
          if (error || !author) reject(error ?? new Error("authors: empty answer"));
          else resolve(author);
        });
      });
    },
    close() {
      client.close();
      channel.close();
    },
  };
}
