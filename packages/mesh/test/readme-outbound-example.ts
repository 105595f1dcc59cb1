import { request } from "node:http";
import * as grpc from "@grpc/grpc-js";
import { hasMeshErrorCode, MeshErrorCode } from "@inmesh/core";
import { createMeshClientOptions } from "@inmesh/grpc";
import type { Mesh } from "@inmesh/mesh";

// Names as a pod writes them: "books" is books.<our namespace>.svc.cluster.local, "books.bookshop"
// books.bookshop.svc.cluster.local; a Service's cluster IP works too.
export async function callBooksEveryWay(mesh: Mesh) {
  const viaFetch = await (await mesh.fetch("http://books/")).text();

  // node:http; axios: { httpAgent: mesh.httpAgent, proxy: false }; got: { agent: { http: mesh.httpAgent } }.
  const viaAgent = await new Promise<string>((resolve, reject) => {
    request("http://books.bookshop/", { agent: mesh.httpAgent }, (response) => {
      let body = "";
      response.setEncoding("utf8");
      response.on("data", (chunk: string) => {
        body += chunk;
      });
      response.on("end", () => resolve(body));
    })
      .on("error", reject)
      .end();
  });

  // Node's global fetch, opt-in; the returned function (or mesh.uninstall()) undoes it.
  const undo = mesh.install();
  let viaGlobalFetch: string;
  try {
    viaGlobalFetch = await (await fetch("http://books/")).text();
  } finally {
    undo();
  }
  return { viaFetch, viaAgent, viaGlobalFetch };
}

// A socket for a database or queue client: mTLS to an endpoint of the db Service, bytes as they are.
export async function askDb(mesh: Mesh, line: string): Promise<string> {
  const socket = await mesh.connect("db:5432");
  socket.end(`${line}\n`);
  let answer = "";
  for await (const chunk of socket) answer += String(chunk);
  return answer;
}

// Egress: an EgressNetwork with trafficPolicy Deny refuses the call before anything leaves.
export async function egressAllowed(mesh: Mesh, url: string): Promise<boolean> {
  try {
    await (await mesh.fetch(url)).arrayBuffer();
    return true;
  } catch (error) {
    if (hasMeshErrorCode((error as Error).cause, MeshErrorCode.EGRESS_DENIED)) return false;
    throw error;
  }
}

// gRPC: a channel for a Service (any generated client takes it), calls leaving from our own address.
export async function callGrpc(
  mesh: Mesh,
  Client: new (
    address: string,
    credentials: grpc.ChannelCredentials,
    options: grpc.ClientOptions,
  ) => grpc.Client & {
    whoAmI(request: Buffer, callback: (error: grpc.ServiceError | null, value?: Buffer) => void): unknown;
  },
): Promise<string> {
  const channel = await mesh.grpcChannel("authors:50051");
  const client = new Client(
    channel.authority,
    grpc.credentials.createInsecure(),
    createMeshClientOptions(channel),
  );
  try {
    return await new Promise<string>((resolve, reject) =>
      client.whoAmI(Buffer.from("?"), (error, value) => (error ? reject(error) : resolve(String(value)))),
    );
  } finally {
    client.close();
    channel.close();
  }
}
