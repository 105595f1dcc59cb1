import { expressMeshMiddleware } from "@inmesh/express";
import { createMesh } from "@inmesh/mesh";
import express from "express";

const mesh = createMesh();
const app = express();
app.use(expressMeshMiddleware()); // req.mesh: the verified caller, and the route and authorization that let it in
app.get("/whoami", (req, res) => {
  res.json({ caller: req.mesh?.clientIdentity, authorization: req.mesh?.authz.name });
});

await mesh.ready();
// mTLS or plaintext on one port; requests the port's Linkerd policy denies never reach the app.
await mesh.createServer(app, { port: 3000 }).listen();
