import { packageBuild } from "../../tsup.base.js";

// `@inmesh/testing/ports` is its own entry: test files of every package pick ports with it without
// loading the mesh.
export default packageBuild({ index: "src/index.ts", ports: "src/ports.ts" });
