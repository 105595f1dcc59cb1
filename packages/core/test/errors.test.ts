import { describe, expect, it } from "vitest";
import {
  ConfigError,
  hasMeshErrorCode,
  IdentityError,
  isMeshError,
  MeshError,
  MeshErrorCode,
} from "../src/index.js";

describe("MeshError", () => {
  it("carries a stable code, cause and details", () => {
    const cause = new Error("boom");
    const error = new IdentityError(MeshErrorCode.IDENTITY_EXPIRED, "expired", {
      cause,
      details: { serial: "01" },
    });
    expect(error.code).toBe("MESH_ERR_IDENTITY_EXPIRED");
    expect(error.cause).toBe(cause);
    expect(error.details).toEqual({ serial: "01" });
    expect(error).toBeInstanceOf(MeshError);
    expect(error).toBeInstanceOf(IdentityError);
    expect(hasMeshErrorCode(error, MeshErrorCode.IDENTITY_EXPIRED)).toBe(true);
  });

  it("instanceof holds for an error from another copy of the package (brand check)", () => {
    const foreign = Object.assign(new Error("x"), { code: MeshErrorCode.INTERNAL });
    Object.defineProperty(foreign, Symbol.for("@inmesh/core.MeshError"), { value: true });
    expect(foreign instanceof MeshError).toBe(true);
    expect(new Error("plain") instanceof MeshError).toBe(false);
    expect(isMeshError({ code: "MESH_ERR_INTERNAL" })).toBe(false);
  });

  it("from() maps abort and timeout errors", () => {
    expect(MeshError.from(new DOMException("t", "TimeoutError")).code).toBe(MeshErrorCode.DEADLINE);
    expect(MeshError.from(new DOMException("a", "AbortError")).code).toBe(MeshErrorCode.CANCELED);
    expect(MeshError.from("text").code).toBe(MeshErrorCode.INTERNAL);
    const config = new ConfigError("bad");
    expect(MeshError.from(config)).toBe(config);
  });

  it("codes are unique", () => {
    const values = Object.values(MeshErrorCode);
    expect(new Set(values).size).toBe(values.length);
    for (const value of values) expect(value).toMatch(/^MESH_ERR_[A-Z_]+$/);
  });
});
