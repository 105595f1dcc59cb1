export type {
  ManifestObject,
  ManifestsInput,
  PodRef,
  TestMesh,
  TestMeshOptions,
  TestService,
  TestWorkload,
} from "./test-mesh.js";
export { freeLoopbackPort, startTestMesh, toManifestFiles } from "./test-mesh.js";
