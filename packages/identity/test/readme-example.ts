import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { connect, createServer } from "node:tls";
import { createIdentityProvider, type IdentityProviderOptions } from "@inmesh/identity";

/** Serves mTLS with our identity, then calls a meshed server (here: ourselves) and returns its reply. */
export async function helloOverMeshTls(
  options: IdentityProviderOptions,
  serverIdentity: string,
): Promise<string> {
  // Reads LINKERD2_PROXY_IDENTITY_* as the Linkerd injector sets them; options override each one.
  const identity = createIdentityProvider(options);
  identity.on("refreshed", ({ serial, notAfterMs }) => {
    process.emitWarning(`new certificate ${serial}, valid until ${new Date(notAfterMs).toISOString()}`);
  });
  await identity.ready({ signal: AbortSignal.timeout(30_000) });
  identity.setTrustAnchors(identity.trustAnchors().pem); // e.g. [old, new] during an anchor rotation

  // Inbound: TLS 1.3 only, client certificates optional, SNI must be our identity.
  const server = createServer(identity.tlsServerOptions(), (socket) => {
    const peer = identity.peerIdentity(socket); // computed once per connection, then cached
    socket.end(peer.kind === "mesh" ? `hello ${peer.name}\n` : "hello stranger\n");
  });
  await once(server.listen(0, "127.0.0.1"), "listening");

  try {
    // Outbound: throws IdentityError MESH_ERR_IDENTITY_EXPIRED at once if our certificate has expired.
    const { port } = server.address() as AddressInfo;
    const socket = connect({ host: "127.0.0.1", port, ...identity.tlsClientOptions(serverIdentity) });
    const [reply] = (await once(socket.setEncoding("utf8"), "data")) as [string];
    socket.destroy();
    return reply.trim();
  } finally {
    server.close();
    await identity.close();
  }
}
