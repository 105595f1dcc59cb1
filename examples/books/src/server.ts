// books: the books API (Fastify 5), meshed by inmesh. Reads are open to every meshed workload, writes only
// to `web` (examples/manifests/30-books-policy.yaml). With BOOKS_FLAKY=true it refuses the first try of
// every distinct POST body with 503, so a caller's retry, and the replayed body, can be seen.
import { createHash } from "node:crypto";
import { fastifyMeshPlugin } from "@inmesh/fastify";
import { createMesh } from "@inmesh/mesh";
import Fastify from "fastify";
import { announceReady, listenAddress, onShutdown, podName } from "../../shared/runtime.js";

interface Book {
  readonly id: number;
  readonly title: string;
  readonly authorId: number;
}

const pod = podName("books");
const flaky = process.env.BOOKS_FLAKY === "true";
/** Bodies the flaky replica has refused once: bounded, oldest forgotten first. */
const MAX_REMEMBERED_BODIES = 1024;

const mesh = createMesh();
const { host, port } = listenAddress();

const books: Book[] = [
  { id: 1, title: "The Left Hand of Darkness", authorId: 1 },
  { id: 2, title: "Kindred", authorId: 2 },
  { id: 3, title: "The Dispossessed", authorId: 1 },
];
const refused = new Map<string, true>();

const app = Fastify({ serverFactory: mesh.serverFactory({ port }), bodyLimit: 1024 * 1024 });
// request.mesh: the verified caller and the policy decision the mesh server made for this request.
await app.register(fastifyMeshPlugin);
// The exact bytes received, so their hash can be compared with what the caller sent.
app.addContentTypeParser("application/json", { parseAs: "buffer" }, (_request, body, done) =>
  done(null, body),
);

app.addHook("onSend", async (request, reply) => {
  reply.header("x-served-by", pod);
  const caller = request.mesh?.clientIdentity;
  if (caller) reply.header("x-caller", caller);
});

app.get("/healthz", async () => "ok");

app.get("/books", async () => ({ replica: pod, books }));

app.post("/books", async (request, reply) => {
  const body = Buffer.isBuffer(request.body) ? request.body : Buffer.alloc(0);
  const sha256 = createHash("sha256").update(body).digest("hex");
  if (flaky && !refused.has(sha256)) {
    if (refused.size >= MAX_REMEMBERED_BODIES) refused.delete(refused.keys().next().value as string);
    refused.set(sha256, true);
    return reply
      .code(503)
      .send({ error: "flaky replica: refusing the first try of this body", replica: pod });
  }
  let book: { title?: unknown; authorId?: unknown };
  try {
    book = JSON.parse(body.toString("utf8")) as typeof book;
  } catch {
    return reply.code(400).send({ error: "the body is not JSON", replica: pod, sha256, bytes: body.length });
  }
  const stored: Book = {
    id: books.length + 1,
    title: typeof book.title === "string" ? book.title.slice(0, 200) : "untitled",
    authorId: typeof book.authorId === "number" ? book.authorId : 0,
  };
  if (books.length < 1000) books.push(stored);
  return reply
    .code(201)
    .send({ replica: pod, id: stored.id, sha256, bytes: body.length, refusedBefore: refused.has(sha256) });
});

onShutdown(async () => {
  await app.close();
  await mesh.close();
});

await mesh.ready({ signal: AbortSignal.timeout(30_000) });
await app.listen({ port, host });
announceReady({ service: "books", pod, host, port, mesh });
