import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { peerCertificateOfSession } from "../src/tls.js";

/** One DER TLV with a definite, minimal length. */
function tlv(tag: number, ...content: Buffer[]): Buffer {
  const body = Buffer.concat(content);
  const length =
    body.length < 0x80
      ? Buffer.from([body.length])
      : body.length < 0x100
        ? Buffer.from([0x81, body.length])
        : Buffer.from([0x82, body.length >> 8, body.length & 0xff]);
  return Buffer.concat([Buffer.from([tag]), length, body]);
}

const integer = (value: number) => tlv(0x02, Buffer.from([value]));
const octets = (bytes: Buffer) => tlv(0x04, bytes);
/** Stands in for a certificate: a SEQUENCE with enough inside to need a long-form length. */
const certificate = tlv(0x30, tlv(0x30, octets(Buffer.alloc(200, 7))), tlv(0x03, Buffer.alloc(70, 1)));

/** The fields OpenSSL encodes (ssl/ssl_asn1.c), with `peer` and what follows it chosen per case. */
function session(options: { version?: number; tagged?: Buffer[] } = {}): Buffer {
  return tlv(
    0x30,
    integer(options.version ?? 1),
    tlv(0x02, Buffer.from([0x03, 0x04])),
    octets(Buffer.from([0x13, 0x02])),
    octets(Buffer.alloc(0)),
    octets(Buffer.alloc(0)),
    ...(options.tagged ?? [
      tlv(0xa1, integer(100)),
      tlv(0xa2, integer(30)),
      tlv(0xa3, certificate),
      tlv(0xa4, octets(Buffer.alloc(32, 9))),
      tlv(0xb3, integer(1)),
    ]),
  );
}

describe("peerCertificateOfSession: the peer's leaf from OpenSSL's session encoding", () => {
  it("returns the bytes of the [3] peer field, as a view", () => {
    const encoded = session();
    const leaf = peerCertificateOfSession(encoded);
    expect(leaf?.equals(certificate)).toBe(true);
    expect(leaf?.buffer).toBe(encoded.buffer);
  });

  it("says none (null) when the session has no peer field: the peer presented no certificate", () => {
    expect(
      peerCertificateOfSession(
        session({ tagged: [tlv(0xa1, integer(1)), tlv(0xa4, octets(Buffer.alloc(4)))] }),
      ),
    ).toBeNull();
    expect(peerCertificateOfSession(session({ tagged: [] }))).toBeNull();
  });

  it("reads nothing from encodings it does not know (the caller falls back to getPeerCertificate)", () => {
    const unknown = {
      "another version": session({ version: 2 }),
      "not a SEQUENCE": Buffer.from(session()).fill(0x31, 0, 1),
      "trailing bytes": Buffer.concat([session(), Buffer.from([0])]),
      "[3] primitive": session({ tagged: [tlv(0x83, certificate)] }),
      "[3] holding more than one certificate": session({ tagged: [tlv(0xa3, certificate, certificate)] }),
      "[3] holding no SEQUENCE": session({ tagged: [tlv(0xa3, octets(Buffer.alloc(3)))] }),
      "tags out of order": session({ tagged: [tlv(0xa4, octets(Buffer.alloc(2))), tlv(0xa3, certificate)] }),
      "a repeated tag": session({
        tagged: [tlv(0xa2, integer(1)), tlv(0xa2, integer(1)), tlv(0xa3, certificate)],
      }),
      "an untagged field after a tagged one": session({
        tagged: [tlv(0xa1, integer(1)), integer(5), tlv(0xa3, certificate)],
      }),
      "a universal tag where a context tag belongs": session({ tagged: [tlv(0x23, certificate)] }),
      empty: Buffer.alloc(0),
    };
    for (const [name, bytes] of Object.entries(unknown)) {
      expect(peerCertificateOfSession(bytes), name).toBeUndefined();
    }
  });

  it("never throws and never reads past the input: every truncation and random bytes", () => {
    const encoded = session();
    for (let length = 0; length < encoded.length; length += 1) {
      expect(peerCertificateOfSession(encoded.subarray(0, length))).toBeUndefined();
    }
    for (let round = 0; round < 2000; round += 1) {
      const bytes = randomBytes(1 + (round % 300));
      if (round % 2 === 0) bytes[0] = 0x30;
      const result = peerCertificateOfSession(bytes);
      if (result) expect(bytes.includes(result)).toBe(true);
    }
  });
});
