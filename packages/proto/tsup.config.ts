import { packageBuild } from "../../tsup.base.js";

// Declarations come from tsc, one file per module (see package.json "build"): a bundled .d.ts flattens
// each `import * as inbound` namespace and keeps only the value half of every message (the const codec),
// losing the interface of the same name that users type with (`inbound.Server`).
export default packageBuild(undefined, { dts: false });
