import { packageBuild } from "../../tsup.base.js";

// `@inmesh/grpc/credentials` is its own entry without shared chunks: it is one small file, and a chunk
// shared with the main entry would be the only way for it to pull the channel code in.
export default packageBuild({ index: "src/index.ts", credentials: "src/credentials.ts" });
