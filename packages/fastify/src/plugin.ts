import { MeshError, MeshErrorCode, type PeerIdentity } from "@inmesh/core";
import {
  createMeshRequestAuthorizer,
  type MeshAuthorization,
  type MeshRequestAuthorizer,
  type MeshRequestAuthorizerOptions,
  type MeshRequestContext,
  meshContext,
} from "@inmesh/http";
import type {
  FastifyInstance,
  FastifyPluginCallback,
  FastifyReply,
  FastifyRequest,
  HookHandlerDoneFunction,
} from "fastify";
import fp from "fastify-plugin";

declare module "fastify" {
  interface FastifyRequest {
    /** The verified caller; null only on routes the plugin does not cover. */
    meshPeer: PeerIdentity | null;
    /** Caller identity, server, route and authorization that admitted the request. */
    mesh: MeshRequestContext | null;
  }
  interface FastifyInstance {
    /** The plugin's `onRequest` hook, for routes when the plugin is registered with `encapsulate: true`. */
    meshOnRequest: (request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction) => void;
  }
}

export interface FastifyMeshPluginOptions extends Partial<MeshRequestAuthorizerOptions> {
  /**
   * Do not add the hook to every route; attach `fastify.meshOnRequest` to chosen routes
   * (`{ onRequest: fastify.meshOnRequest }`) instead.
   * @default false
   */
  encapsulate?: boolean;
}

function meshPlugin(
  fastify: FastifyInstance,
  options: FastifyMeshPluginOptions,
  pluginDone: (error?: Error) => void,
): void {
  const { encapsulate, identity, policy, port, initialPolicyWaitMs } = options;
  let authorizer: MeshRequestAuthorizer | undefined;
  try {
    if (identity !== undefined || policy !== undefined || port !== undefined) {
      authorizer = createMeshRequestAuthorizer({
        identity: identity as MeshRequestAuthorizerOptions["identity"],
        policy: policy as MeshRequestAuthorizerOptions["policy"],
        port: port as number,
        ...(initialPolicyWaitMs === undefined ? {} : { initialPolicyWaitMs }),
      });
    }
  } catch (error) {
    pluginDone(error as Error);
    return;
  }

  fastify.decorateRequest("meshPeer", null);
  fastify.decorateRequest("mesh", null);

  const settle = (
    request: FastifyRequest,
    reply: FastifyReply,
    done: HookHandlerDoneFunction,
    result: MeshAuthorization,
  ) => {
    if (!result.allowed) {
      const response = result.response;
      // Linkerd logs every denial at INFO.
      request.log.info({ reason: response.reason, status: response.status }, "Request denied");
      reply.code(response.status).headers(response.headers).send();
      return;
    }
    request.mesh = result.context;
    request.meshPeer = result.context.peer;
    done();
  };

  // Runs before body parsing: an unauthorized request never gets its body read or a handler run.
  function meshOnRequest(request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction): void {
    const context = meshContext(request.raw);
    if (context !== undefined) {
      request.mesh = context;
      request.meshPeer = context.peer;
      done();
      return;
    }
    if (authorizer === undefined) {
      request.log.warn("request did not come through the mesh server; refused");
      reply.code(403).header("content-length", "0").send();
      return;
    }
    let result: MeshAuthorization | Promise<MeshAuthorization>;
    try {
      result = authorizer.authorize(request.raw);
    } catch (error) {
      done(error as Error);
      return;
    }
    if (result instanceof Promise) {
      result.then(
        (settled) => settle(request, reply, done, settled),
        (error: unknown) =>
          done(error instanceof Error ? error : new MeshError(MeshErrorCode.INTERNAL, String(error))),
      );
    } else {
      settle(request, reply, done, result);
    }
  }

  fastify.decorate("meshOnRequest", meshOnRequest);
  if (encapsulate !== true) fastify.addHook("onRequest", meshOnRequest);
  fastify.addHook("onClose", (_instance, done) => {
    authorizer = undefined;
    done();
  });
  pluginDone();
}

/**
 * The Fastify plugin for meshed services: decorates requests with `meshPeer` and `mesh`, and authorizes
 * in `onRequest`, before the body is parsed. Serve the app with `createMeshServer` through Fastify's
 * `serverFactory` (recommended); then the plugin exposes what the mesh server decided. With `identity`,
 * `policy` and `port` it authorizes requests itself, for apps on their own TLS server.
 */
export const fastifyMeshPlugin: FastifyPluginCallback<FastifyMeshPluginOptions> = fp(meshPlugin, {
  name: "@inmesh/fastify",
  fastify: "5.x",
});
