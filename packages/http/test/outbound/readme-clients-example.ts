import { request } from "node:http";
import { installGlobalDispatcher, type MeshDispatcher, MeshHttpAgent } from "@inmesh/http";

/** Clients other than undici, through the same mesh dispatcher (axios, got: pass the same agent). */
export async function callWithOtherClients(dispatcher: MeshDispatcher, url: string) {
  // node:http: each connection goes to a balanced endpoint, over mTLS to that endpoint's identity.
  const agent = new MeshHttpAgent(dispatcher.openConnection);
  const viaAgent = await new Promise<string>((resolve, reject) => {
    request(url, { agent }, (response) => {
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
  agent.destroy();

  // Node's global fetch: opt in, and undo when done (the undo restores the previous dispatcher).
  const undo = installGlobalDispatcher(dispatcher);
  let viaGlobalFetch: string;
  try {
    viaGlobalFetch = await (await fetch(url)).text();
  } finally {
    undo();
  }
  return { viaAgent, viaGlobalFetch };
}
