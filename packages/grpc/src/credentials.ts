// A light entry (`@inmesh/grpc/credentials`): the certificate provider alone, so a process that only
// needs control-plane mTLS (every createMesh process) does not load the mesh channel, the balancer,
// @inmesh/destination and re2js with the main entry.
export { createMeshCertificateProvider } from "./client/certificate-provider.js";
