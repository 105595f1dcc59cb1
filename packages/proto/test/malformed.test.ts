import { isMeshError, MeshErrorCode } from "@inmesh/core";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { decodeMessage, destination, identity, inbound, outbound } from "../src/index.js";

function decodeError(run: () => unknown): string {
  try {
    run();
  } catch (error) {
    expect(isMeshError(error)).toBe(true);
    return (error as { code: string }).code;
  }
  throw new Error("expected a decode error");
}

describe("malformed protobuf input gives typed errors", () => {
  const certify = identity.CertifyRequest.encode({
    identity: "web.default.serviceaccount.identity.linkerd.cluster.local",
    token: Buffer.from("token"),
    certificateSigningRequest: Buffer.alloc(32, 1),
  }).finish();

  it("every truncation inside a field is refused", () => {
    // A cut exactly between two fields is a valid, shorter message: protobuf cannot tell it apart.
    const afterIdentity = identity.CertifyRequest.encode({
      ...identity.CertifyRequest.decode(certify),
      token: Buffer.alloc(0),
      certificateSigningRequest: Buffer.alloc(0),
    }).finish().byteLength;
    const afterToken = afterIdentity + 2 + "token".length;
    const fieldBoundaries = new Set([afterIdentity, afterToken]);
    for (let length = 1; length < certify.byteLength; length += 1) {
      if (fieldBoundaries.has(length)) continue;
      expect(decodeError(() => decodeMessage(identity.CertifyRequest, certify.subarray(0, length)))).toBe(
        MeshErrorCode.PROTO_DECODE,
      );
    }
  });

  it("invalid wire types and stray end-group tags are refused", () => {
    expect(decodeError(() => decodeMessage(identity.CertifyRequest, Buffer.from([0x0e, 0x00])))).toBe(
      MeshErrorCode.PROTO_DECODE,
    ); // wire type 6
    expect(decodeError(() => decodeMessage(identity.CertifyRequest, Buffer.from([0x0f, 0x00])))).toBe(
      MeshErrorCode.PROTO_DECODE,
    ); // wire type 7
    expect(decodeError(() => decodeMessage(identity.CertifyRequest, Buffer.from([0x0c])))).toBe(
      MeshErrorCode.PROTO_DECODE,
    ); // end group
  });

  it("a length prefix larger than the input is refused without allocating it", () => {
    // field 1, length-delimited, declared length 0xFFFFFFFF (varint ff ff ff ff 0f)
    const bytes = Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x61]);
    expect(decodeError(() => decodeMessage(identity.CertifyRequest, bytes))).toBe(MeshErrorCode.PROTO_DECODE);
  });

  it("input over the size cap is refused before decoding", () => {
    expect(decodeError(() => decodeMessage(identity.CertifyRequest, certify, { maxBytes: 16 }))).toBe(
      MeshErrorCode.PROTO_TOO_LARGE,
    );
  });

  it("a known field sent with another valid wire type is skipped as unknown, as upstream decoders do", () => {
    // field 3 (csr, declared bytes) sent as varint: decodes with an empty CSR, which Certify then rejects.
    const message = decodeMessage(identity.CertifyRequest, Buffer.from([0x18, 0x05]));
    expect(message.certificateSigningRequest.byteLength).toBe(0);
  });

  it("random bytes never crash the decoders of control-plane messages", () => {
    const codecs = [
      identity.CertifyResponse,
      inbound.Server,
      outbound.OutboundPolicy,
      destination.Update,
      destination.DestinationProfile,
    ];
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 256 }),
        fc.integer({ min: 0, max: codecs.length - 1 }),
        (bytes, index) => {
          try {
            decodeMessage(codecs[index] as typeof inbound.Server, bytes);
          } catch (error) {
            return isMeshError(error);
          }
          return true;
        },
      ),
      { numRuns: 20_000 },
    );
  });

  it("mutations of a valid Server never crash the decoder", () => {
    const valid = inbound.Server.encode(
      inbound.Server.fromPartial({
        protocol: {
          kind: {
            $case: "http2",
            value: {
              routes: [{ rules: [{ matches: [{ path: { kind: { $case: "exact", value: "/x" } } }] }] }],
            },
          },
        },
        authorizations: [{ networks: [{ net: { ip: { ip: { $case: "ipv4", value: 1 } }, prefixLen: 0 } }] }],
      }),
    ).finish();
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: valid.byteLength - 1 }),
        fc.integer({ min: 0, max: 255 }),
        (position, value) => {
          const mutated = Buffer.from(valid);
          mutated[position] = value;
          try {
            decodeMessage(inbound.Server, mutated);
          } catch (error) {
            return isMeshError(error);
          }
          return true;
        },
      ),
      { numRuns: 10_000 },
    );
  });
});
