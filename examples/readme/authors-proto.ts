// The example authors service's grpc-js definitions, loaded from its .proto at run time (no code
// generation step), for the gRPC samples in the README.
import { createRequire } from "node:module";
import {
  type ChannelCredentials,
  type Client,
  type ClientOptions,
  type ClientUnaryCall,
  loadPackageDefinition,
  type ServerUnaryCall,
  type ServiceDefinition,
  type ServiceError,
  type sendUnaryData,
} from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import { meshPeer } from "@inmesh/grpc";

export interface Author {
  id: number;
  name: string;
  replica: string;
  caller: string;
}

export interface AuthorsClient extends Client {
  getAuthor(
    request: { id: number },
    callback: (error: ServiceError | null, author?: Author) => void,
  ): ClientUnaryCall;
}

const protoPath = createRequire(import.meta.url).resolve("@inmesh-examples/authors/authors.proto");
const loaded = loadPackageDefinition(loadSync(protoPath, { defaults: true })) as unknown as {
  bookshop: {
    authors: {
      v1: {
        Authors: {
          new (address: string, credentials: ChannelCredentials, options?: ClientOptions): AuthorsClient;
          service: ServiceDefinition;
        };
      };
    };
  };
};

/** A grpc-js client class; `Authors.service` is the service definition for `server.addService`. */
export const Authors = loaded.bookshop.authors.v1.Authors;

export const authorsHandlers = {
  getAuthor(call: ServerUnaryCall<{ id: number }, Author>, done: sendUnaryData<Author>) {
    const peer = meshPeer(call); // the caller the mesh verified over mTLS
    const caller = peer?.kind === "mesh" ? peer.name : "";
    done(null, { id: call.request.id, name: "Ursula K. Le Guin", replica: "readme", caller });
  },
};
