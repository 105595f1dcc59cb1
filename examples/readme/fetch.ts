import { createMesh } from "@inmesh/mesh";

// Configured from LINKERD2_PROXY_* like a sidecar: the injector's variables, or `inmesh env` locally.
const mesh = createMesh();
await mesh.ready(); // identity issued, policy loaded

// By service name: discovery, mTLS to each endpoint's identity, balancing, route timeouts and retries.
const response = await mesh.fetch("http://books.bookshop.svc.cluster.local/books");
console.log(response.status, await response.json());
await mesh.close();
