// web: the front end (Express 5), meshed by inmesh. It calls books over HTTP through `mesh.fetch`, by
// service name, and authors over gRPC; the mesh discovers, balances, encrypts and retries those calls.
import { createHash } from "node:crypto";
import { expressMeshMiddleware } from "@inmesh/express";
import { createMesh } from "@inmesh/mesh";
import express from "express";
import { announceReady, listenAddress, onShutdown, podName } from "../../shared/runtime.js";
import { type Attempt, recordAttempts } from "./attempts.js";
import { createAuthorsClient } from "./authors-client.js";

const pod = podName("web");
const BOOKS_URL = process.env.BOOKS_URL ?? "http://books.bookshop.svc.cluster.local";
const AUTHORS_TARGET = process.env.AUTHORS_TARGET ?? "authors.bookshop.svc.cluster.local:50051";
const MAX_LISTED = 20;

const { host, port } = listenAddress();
// Everything comes from the pod's LINKERD2_PROXY_* variables (and, locally, the source address its
// calls leave from: MESH_SDK_OUTBOUND_LOCAL_ADDRESS, its own 127.0.0.x).
const mesh = createMesh();
const authors = createAuthorsClient(mesh, AUTHORS_TARGET);

const app = express();
// req.mesh / req.meshPeer: who called web, as the mesh server verified it.
app.use(expressMeshMiddleware());

app.get("/", async (_req, res) => {
  const response = await mesh.fetch(`${BOOKS_URL}/books`);
  const listing = (await response.json()) as { books: { id: number; title: string; authorId: number }[] };
  const books = await Promise.all(
    listing.books.slice(0, MAX_LISTED).map(async (book) => ({
      ...book,
      // A book posted with an unknown author is still listed.
      author: await authors.getAuthor(book.authorId).catch(() => undefined),
    })),
  );
  res.json({
    books,
    calls: {
      books: {
        status: response.status,
        servedBy: response.headers.get("x-served-by"),
        callerSeenByBooks: response.headers.get("x-caller"),
      },
      authors: { servedBy: books[0]?.author?.replica, callerSeenByAuthors: books[0]?.author?.caller },
    },
  });
});

// Forwards the body, byte for byte, to books and reports what each side saw.
app.post("/books", express.raw({ type: () => true, limit: "1mb" }), async (req, res) => {
  const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
  const attempts: Attempt[] = [];
  const response = await recordAttempts(attempts, () =>
    mesh.fetch(`${BOOKS_URL}/books`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
    }),
  );
  const text = await response.text();
  let received: { sha256?: string; bytes?: number; replica?: string } = {};
  try {
    received = JSON.parse(text) as typeof received;
  } catch {
    // Denials and errors the mesh synthesizes have an empty body.
  }
  const sentSha256 = createHash("sha256").update(body).digest("hex");
  res.status(response.ok ? 200 : 502).json({
    status: response.status,
    proxyError: response.headers.get("l5d-proxy-error"),
    sent: { sha256: sentSha256, bytes: body.length },
    received: { sha256: received.sha256 ?? null, bytes: received.bytes ?? null, replica: received.replica },
    intact: received.sha256 === sentSha256 && received.bytes === body.length,
    attempts,
  });
});

// Express 5 hands rejected route promises here: a failed call to books becomes a 502.
app.use((error: unknown, _req: express.Request, res: express.Response, _next: express.NextFunction) => {
  res.status(502).json({ error: error instanceof Error ? error.message : String(error), replica: pod });
});

const server = mesh.createServer(app, { port });

onShutdown(async () => {
  authors.close();
  await mesh.close();
});

await mesh.ready({ signal: AbortSignal.timeout(30_000) });
await server.listen(port, host);
announceReady({ service: "web", pod, host, port, mesh });
