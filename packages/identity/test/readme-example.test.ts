import { afterAll, beforeAll, expect, it } from "vitest";
import type { CertificateAuthority } from "../../control-plane/src/ca.js";
import { helloOverMeshTls } from "./readme-example.js";
import {
  createTestCa,
  type IdentityServer,
  startIdentityServer,
  TOKEN,
  WORKLOAD,
} from "./support/identity-server.js";

let ca: CertificateAuthority;
let identityServer: IdentityServer;
beforeAll(async () => {
  ca = await createTestCa();
  identityServer = await startIdentityServer({ ca });
});
afterAll(() => identityServer.close());

it("the README example runs", async () => {
  const reply = await helloOverMeshTls(
    {
      env: {
        LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS: ca.trustAnchorsPem,
        LINKERD2_PROXY_IDENTITY_LOCAL_NAME: WORKLOAD,
        LINKERD2_PROXY_IDENTITY_SVC_ADDR: identityServer.address,
      },
      readToken: () => TOKEN,
    },
    WORKLOAD,
  );
  expect(reply).toBe(`hello ${WORKLOAD}`);
});
