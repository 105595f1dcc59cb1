import { createServer, type Server } from "node:https";
import { expressMeshMiddleware } from "@inmesh/express";
import type { IdentityProvider } from "@inmesh/identity";
import type { PolicyWatcher } from "@inmesh/policy";
import express from "express";

/** Standalone: the app's own TLS server; the middleware authorizes each request itself. */
export function ordersOnOwnServer(identity: IdentityProvider, policy: PolicyWatcher): Server {
  const app = express();
  app.use(expressMeshMiddleware({ identity, policy, port: 8080 }));
  app.get("/orders", (req, res) => {
    res.json({ caller: req.meshPeer, route: req.mesh?.route.name });
  });
  return createServer(identity.tlsServerOptions(), app);
}
