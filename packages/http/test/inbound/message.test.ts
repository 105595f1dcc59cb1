import { createServer, type IncomingMessage, type Server } from "node:http";
import net, { type AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { MeshIncomingMessage } from "../../src/inbound/message.js";

let server: Server | undefined;

afterEach(async () => {
  server?.closeAllConnections();
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  server = undefined;
});

interface Seen {
  readonly path: string | undefined;
  readonly events: string[];
}

/** node:http with the mesh server's request class; `read` says whether the app reads each request. */
async function listen(read: (req: IncomingMessage) => boolean): Promise<{ port: number; seen: Seen[] }> {
  const seen: Seen[] = [];
  const created = createServer({ IncomingMessage: MeshIncomingMessage }, (req, res) => {
    const entry: Seen = { path: req.url, events: [] };
    seen.push(entry);
    for (const event of ["end", "close", "resume"]) req.on(event, () => entry.events.push(event));
    if (read(req)) req.on("data", () => undefined);
    res.end(`served ${req.url}`);
  });
  server = created;
  await new Promise<void>((resolve) => created.listen(0, "127.0.0.1", resolve));
  return { port: (created.address() as AddressInfo).port, seen };
}

/** Sends `requests` on one keep-alive connection at once, resolves with every response body. */
function pipeline(port: number, requests: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    let text = "";
    const socket = net.connect(port, "127.0.0.1", () => socket.write(requests));
    socket.setEncoding("latin1");
    socket.on("error", reject);
    socket.on("data", (chunk: string) => {
      text += chunk;
      const bodies = [...text.matchAll(/served (\/[a-z])/g)].map((match) => match[1] as string);
      if (bodies.length === requests.split("HTTP/1.1\r\n").length - 1) {
        socket.destroy();
        resolve(bodies);
      }
    });
  });
}

const settle = () => new Promise((resolve) => setImmediate(resolve));

describe("MeshIncomingMessage: a request the application does not read", () => {
  it("ends and closes like any other, and the connection serves the next request", async () => {
    const { port, seen } = await listen(() => false);
    const bodies = await pipeline(
      port,
      "GET /a HTTP/1.1\r\nHost: x\r\n\r\n" +
        // A body nobody reads is still taken off the wire, or the next request would start inside it.
        "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world" +
        "GET /c HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    expect(bodies).toEqual(["/a", "/b", "/c"]);
    await settle();
    for (const entry of seen) {
      expect(
        entry.events.filter((event) => event !== "resume"),
        entry.path,
      ).toEqual(["end", "close"]);
    }
  });

  it("is dumped as node:http does when the application listens for data", async () => {
    const { port, seen } = await listen(() => true);
    const bodies = await pipeline(
      port,
      "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" + "GET /b HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    expect(bodies).toEqual(["/a", "/b"]);
    await settle();
    expect(seen.map((entry) => entry.events.filter((event) => event !== "resume"))).toEqual([
      ["end", "close"],
      ["end", "close"],
    ]);
  });
});
