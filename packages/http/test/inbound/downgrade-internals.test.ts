import { describe, expect, it } from "vitest";
import { missingDowngradeInternals } from "../../src/inbound/http1-downgrade.js";

// The HTTP/2 → HTTP/1 downgrade takes node:http's output before it becomes HTTP/1 bytes, through
// internals that are stable across Node 20–24 (see http1-downgrade.ts). CI runs this on every Node line
// it tests; a line that changed them fails here, not with HTTP/1 bytes inside HTTP/2 frames.
describe("node:http internals the HTTP/2 downgrade relies on", () => {
  it(`are all present on Node ${process.version}`, () => {
    expect(missingDowngradeInternals()).toEqual([]);
  });
});
