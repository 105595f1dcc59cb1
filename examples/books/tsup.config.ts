import { packageBuild } from "../../tsup.base.js";

// A runnable service, not a library: one entry, no declarations.
export default packageBuild({ server: "src/server.ts" }, { dts: false });
