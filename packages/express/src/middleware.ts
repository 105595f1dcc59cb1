import { MeshError, MeshErrorCode, type PeerIdentity, PolicyDeniedError } from "@inmesh/core";
import {
  createMeshRequestAuthorizer,
  type MeshAuthorization,
  type MeshRequestAuthorizer,
  type MeshRequestAuthorizerOptions,
  type MeshRequestContext,
  meshContext,
  sendMeshResponse,
} from "@inmesh/http";
import type { NextFunction, Request, Response } from "express";

declare global {
  namespace Express {
    interface Request {
      /** The verified caller, set by the mesh (`createMeshServer`) or by `expressMeshMiddleware`. */
      meshPeer?: PeerIdentity;
      /** Caller identity, server, route and authorization that admitted the request. */
      mesh?: MeshRequestContext;
    }
  }
}

/**
 * Without options the middleware only exposes what `createMeshServer` established (the recommended
 * setup: `createMeshServer({ handler: app, … })`) and refuses requests that did not come through it.
 * With `identity`, `policy` and `port` it authorizes requests itself, for apps served by their own
 * `https.createServer(identity.tlsServerOptions(), app)`.
 */
export type ExpressMeshMiddlewareOptions = MeshRequestAuthorizerOptions | Record<string, never>;

function hasAuthorizerOptions(
  options: ExpressMeshMiddlewareOptions,
): options is MeshRequestAuthorizerOptions {
  return "identity" in options || "policy" in options || "port" in options;
}

/**
 * Express middleware for meshed services: mount it first. It puts the caller's verified identity and the
 * policy decision on `req.meshPeer` / `req.mesh`, and never lets an unauthorized request reach the
 * routes after it (denials are answered as Linkerd answers them: 403/404 with an empty body).
 */
export function expressMeshMiddleware(
  options: ExpressMeshMiddlewareOptions = {},
): (req: Request, res: Response, next: NextFunction) => void {
  if (typeof options !== "object" || options === null) {
    throw new MeshError(MeshErrorCode.INVALID_ARG, "expressMeshMiddleware: options must be an object");
  }
  const authorizer: MeshRequestAuthorizer | undefined = hasAuthorizerOptions(options)
    ? createMeshRequestAuthorizer(options)
    : undefined;

  const settle = (req: Request, res: Response, next: NextFunction, result: MeshAuthorization) => {
    if (!result.allowed) {
      sendMeshResponse(res, result.response);
      return;
    }
    req.mesh = result.context;
    req.meshPeer = result.context.peer;
    next();
  };

  return function meshMiddleware(req: Request, res: Response, next: NextFunction): void {
    const context = meshContext(req);
    if (context !== undefined) {
      req.mesh = context;
      req.meshPeer = context.peer;
      next();
      return;
    }
    if (authorizer === undefined) {
      // Fail closed: this app expects createMeshServer in front of it, and this request bypassed it.
      const error = new PolicyDeniedError(undefined, "the request did not come through the mesh server", {
        details: { reason: "not-meshed" },
      });
      next(Object.assign(error, { status: 403, expose: false }));
      return;
    }
    let result: MeshAuthorization | Promise<MeshAuthorization>;
    try {
      result = authorizer.authorize(req);
    } catch (error) {
      next(error);
      return;
    }
    if (result instanceof Promise) {
      result.then((settled) => settle(req, res, next, settled), next);
    } else {
      settle(req, res, next, result);
    }
  };
}
