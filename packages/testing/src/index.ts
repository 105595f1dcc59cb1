export { freeLoopbackPort } from "./ports.js";
export type {
  ManifestObject,
  ManifestsInput,
  PodRef,
  TestMesh,
  TestMeshOptions,
  TestService,
  TestWorkload,
} from "./test-mesh.js";
export { startTestMesh, toManifestFiles } from "./test-mesh.js";
