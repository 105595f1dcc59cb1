import { packageBuild } from "../../tsup.base.js";

// Two entries sharing chunks: `@inmesh/http/inbound` loads the server side without undici and the
// outbound stack (createMesh loads those on first outbound use).
export default packageBuild({ index: "src/index.ts", inbound: "src/inbound.ts" }, { splitting: true });
