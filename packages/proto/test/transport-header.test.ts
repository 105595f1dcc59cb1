import { isMeshError, MeshErrorCode } from "@inmesh/core";
import { describe, expect, it } from "vitest";
import {
  decodeTransportHeader,
  encodeTransportHeader,
  MAX_TRANSPORT_HEADER_BYTES,
  parseTransportHeader,
  TRANSPORT_HEADER_PREFACE,
} from "../src/index.js";

function codeOf(run: () => unknown): string | undefined {
  try {
    run();
  } catch (error) {
    return isMeshError(error) ? error.code : "untyped";
  }
  return undefined;
}

describe("transport header codec", () => {
  it("encodes the preface, a big-endian length and the Header fields", () => {
    const bytes = encodeTransportHeader({ port: 8080, name: "", sessionProtocol: "http2" });
    // Header{port(1, varint)=8080 → 08 90 3f; session_protocol(3) = {http2(2) {}} → 1a 02 12 00}
    const body = Buffer.from("08903f1a021200", "hex");
    const expected = Buffer.concat([
      Buffer.from("transport.l5d.io/v1\r\n\r\n"),
      Buffer.from([0, 0, 0, body.length]),
      body,
    ]);
    expect(bytes.toString("hex")).toBe(expected.toString("hex"));
    expect(TRANSPORT_HEADER_PREFACE.byteLength).toBe(23);
  });

  it("round-trips every session protocol and keeps the application bytes after the header", () => {
    for (const sessionProtocol of ["http1", "http2", undefined] as const) {
      const header = encodeTransportHeader({ port: 443, name: "gw.example", sessionProtocol });
      const withApp = Buffer.concat([header, Buffer.from("GET / HTTP/1.1\r\n")]);
      const parsed = decodeTransportHeader(withApp);
      expect(parsed).toEqual({ port: 443, name: "gw.example", sessionProtocol, consumed: header.byteLength });
      expect(withApp.subarray(parsed.consumed).toString()).toBe("GET / HTTP/1.1\r\n");
    }
  });

  it("asks for more bytes on every strict prefix and reports truncation when the input has ended", () => {
    const header = encodeTransportHeader({ port: 1, name: "", sessionProtocol: "http1" });
    for (let length = 0; length < header.byteLength; length += 1) {
      expect(parseTransportHeader(header.subarray(0, length)).complete).toBe(false);
      expect(codeOf(() => decodeTransportHeader(header.subarray(0, length)))).toBe(
        MeshErrorCode.TRANSPORT_HEADER_TRUNCATED,
      );
    }
  });

  it("refuses a wrong preface at the first differing byte", () => {
    expect(codeOf(() => parseTransportHeader(Buffer.from("GET / HTTP/1.1")))).toBe(
      MeshErrorCode.TRANSPORT_HEADER_INVALID,
    );
    expect(codeOf(() => parseTransportHeader(Buffer.from("transport.l5d.io/v2")))).toBe(
      MeshErrorCode.TRANSPORT_HEADER_INVALID,
    );
  });

  it("refuses an oversized declared length before buffering it", () => {
    const oversized = Buffer.concat([TRANSPORT_HEADER_PREFACE, Buffer.from([0xff, 0xff, 0xff, 0xff])]);
    expect(codeOf(() => parseTransportHeader(oversized))).toBe(MeshErrorCode.TRANSPORT_HEADER_TOO_LARGE);
    const justOver = Buffer.alloc(4);
    justOver.writeUInt32BE(MAX_TRANSPORT_HEADER_BYTES + 1);
    expect(codeOf(() => parseTransportHeader(Buffer.concat([TRANSPORT_HEADER_PREFACE, justOver])))).toBe(
      MeshErrorCode.TRANSPORT_HEADER_TOO_LARGE,
    );
  });

  it("refuses ports outside 1-65535 and malformed bodies", () => {
    expect(codeOf(() => encodeTransportHeader({ port: 0, name: "", sessionProtocol: undefined }))).toBe(
      MeshErrorCode.TRANSPORT_HEADER_INVALID,
    );
    const zeroPort = Buffer.concat([TRANSPORT_HEADER_PREFACE, Buffer.from([0, 0, 0, 0])]);
    expect(codeOf(() => parseTransportHeader(zeroPort))).toBe(MeshErrorCode.TRANSPORT_HEADER_INVALID);
    const garbage = Buffer.concat([TRANSPORT_HEADER_PREFACE, Buffer.from([0, 0, 0, 2, 0x0f, 0x00])]);
    expect(codeOf(() => parseTransportHeader(garbage))).toBe(MeshErrorCode.PROTO_DECODE);
  });
});
