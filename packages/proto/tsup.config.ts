import { packageBuild } from "../../tsup.base.js";

// Declarations come from tsc, one file per module (see package.json "build"): a bundled .d.ts flattens
// each `import * as inbound` namespace and keeps only the value half of every message (the const codec),
// losing the interface of the same name that users type with (`inbound.Server`).
// A second entry, `@inmesh/proto/serving`, holds what a service needs at start-up (identity, inbound
// policy, the transport header): createMesh loads it alone, and the destination and outbound codecs
// (more than half the generated code) only with discovery. One entry, not one per API: each extra
// module file costs more to load than the code it would leave out.
// The wire reader and writer of @bufbuild/protobuf are bundled in, tree-shaken: its `/wire` entry also
// re-exports the reflection-based (de)serializers, and loading those 20-odd modules took ~17 ms of a
// service's start-up, more than our own serving code. The package stays a dependency for the types the
// declarations name (BinaryReader, BinaryWriter); its licence notices are in THIRD-PARTY-NOTICES.md.
export default packageBuild(
  { index: "src/index.ts", serving: "src/serving.ts" },
  { dts: false, splitting: true, noExternal: ["@bufbuild/protobuf"] },
);
