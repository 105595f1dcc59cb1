import { createMesh } from "@inmesh/mesh";
import { request } from "undici";

const mesh = createMesh();
await mesh.ready();

// mesh.dispatcher is an undici Dispatcher: give it to request(), stream(), pipeline() or an Agent's users.
const { statusCode, body } = await request("http://books.bookshop.svc.cluster.local/books", {
  method: "POST",
  headers: { "content-type": "application/json" },
  body: JSON.stringify({ title: "Kindred", authorId: 2 }), // kept (up to 64 KiB) so a retry can replay it
  dispatcher: mesh.dispatcher,
});
console.log(statusCode, await body.json());
