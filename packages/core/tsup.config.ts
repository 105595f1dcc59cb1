import { packageBuild } from "../../tsup.base.js";

// `@inmesh/core/http2-abuse` is its own entry: only the HTTP/2 servers (ours and grpc-js's) load it.
export default packageBuild({ index: "src/index.ts", "http2-abuse": "src/http2-abuse.ts" });
