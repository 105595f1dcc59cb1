import { describe, expect, it } from "vitest";
import { destination, identity, inbound, outbound } from "../src/index.js";

// Every expected byte string below was worked out by hand from the field numbers and wire types in
// linkerd-contract.md §1 (tag = field << 3 | wire type; varints little-endian base 128; fixed32 and
// floats little-endian), independently of the generated encoder.
const hex = (text: string) => Buffer.from(text.replace(/\s+/g, ""), "hex");
const encodeHex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex");

describe("wire bytes match the contract's field numbers", () => {
  it("CertifyRequest", () => {
    const message: identity.CertifyRequest = {
      identity: "a.b",
      token: Buffer.from("tk"),
      certificateSigningRequest: Buffer.from([0x30, 0x01]),
    };
    const expected = hex(
      `
      0a 03 61 2e 62   -- 1 identity: "a.b"
      12 02 74 6b      -- 2 token: "tk"
      1a 02 30 01      -- 3 certificate_signing_request
    `.replace(/--[^\n]*/g, ""),
    );
    expect(encodeHex(identity.CertifyRequest.encode(message).finish())).toBe(expected.toString("hex"));
    expect(identity.CertifyRequest.decode(expected)).toEqual(message);
  });

  it("CertifyResponse with a Timestamp from the non-standard import path", () => {
    const message: identity.CertifyResponse = {
      leafCertificate: Buffer.from([0x30]),
      intermediateCertificates: [Buffer.from([0x31]), Buffer.from([0x32])],
      validUntil: { seconds: 1_700_000_000n, nanos: 0 },
    };
    // 1_700_000_000 = 0x6553F100 → varint 80 e2 cf aa 06
    const expected = hex("0a0130 120131 120132 1a06 0880e2cfaa06");
    expect(encodeHex(identity.CertifyResponse.encode(message).finish())).toBe(expected.toString("hex"));
    expect(identity.CertifyResponse.decode(expected)).toEqual(message);
  });

  it("inbound Server with an authorization and an HTTP route", () => {
    const message = inbound.Server.fromPartial({
      protocol: {
        kind: {
          $case: "detect",
          value: {
            timeout: { seconds: 10n, nanos: 0 },
            httpRoutes: [
              {
                metadata: { kind: { $case: "default", value: "default" } },
                rules: [{ matches: [{ path: { kind: { $case: "prefix", value: "/" } } }] }],
              },
            ],
          },
        },
      },
      authorizations: [
        {
          networks: [{ net: { ip: { ip: { $case: "ipv4", value: 0x0a000000 } }, prefixLen: 8 } }],
          authentication: {
            permit: {
              $case: "meshTLS",
              value: { clients: { $case: "identities", value: { suffixes: [{ parts: [] }] } } },
            },
          },
          metadata: { kind: { $case: "default", value: "all-authenticated" } },
        },
      ],
      labels: { name: "x" },
    });
    const route = "0a09 0a07 64656661756c74 2207 0a05 0a03 12012f"; // metadata "default"; rules[prefix "/"]
    const detect = `0a02 080a 1a14 ${route}`; // timeout 10s; http_routes
    const protocol = `0a1c 0a1a ${detect}`; // Server.protocol → ProxyProtocol.detect
    const network = "0a0b 0a09 0a05 0d0000000a 1008"; // networks[{net: 10.0.0.0/8}] (fixed32 LE)
    const authn = "1206 1204 1202 1200"; // authentication → meshTLS → identities → suffixes[{}]
    const authzMeta = "2213 0a11 616c6c2d61757468656e74696361746564"; // metadata default "all-authenticated"
    const authz = `1a2a ${network} ${authn} ${authzMeta}`;
    const labels = "2209 0a046e616d65 120178"; // labels {name: "x"}
    const expected = hex(`${protocol} ${authz} ${labels}`);
    expect(encodeHex(inbound.Server.encode(message).finish())).toBe(expected.toString("hex"));
    expect(inbound.Server.decode(expected)).toEqual(message);
  });

  it("OutboundPolicy with route retries and timeouts", () => {
    const message = outbound.OutboundPolicy.fromPartial({
      protocol: {
        kind: {
          $case: "http1",
          value: {
            routes: [
              {
                rules: [
                  {
                    timeouts: { request: { seconds: 5n, nanos: 0 } },
                    retry: {
                      maxRetries: 3,
                      maxRequestBytes: 65536,
                      conditions: { statusRanges: [{ start: 500, end: 599 }] },
                      backoff: {
                        minBackoff: { seconds: 0n, nanos: 25_000_000 },
                        maxBackoff: { seconds: 0n, nanos: 250_000_000 },
                        jitterRatio: 1,
                      },
                    },
                  },
                ],
              },
            ],
          },
        },
      },
    });
    const timeouts = "2a04 1202 0805"; // Rule.timeouts(5) { request(2): 5s }
    const conditions = "1a08 0a06 08f403 10d704"; // conditions { status_ranges [{500, 599}] }
    const backoff = "2a13 0a05 10c0f0f50b 1205 1080e59a77 1d0000803f"; // 25ms, 250ms, jitter 1.0f
    const retry = `3225 0803 10808004 ${conditions} ${backoff}`; // max_retries 3, max_request_bytes 65536
    const expected = hex(`0a33 1a31 0a2f 1a2d ${timeouts} ${retry}`);
    expect(encodeHex(outbound.OutboundPolicy.encode(message).finish())).toBe(expected.toString("hex"));
    expect(outbound.OutboundPolicy.decode(expected)).toEqual(message);
  });

  it("destination Update with a WeightedAddrSet, TlsIdentity and ProtocolHint", () => {
    const message = destination.Update.fromPartial({
      update: {
        $case: "add",
        value: {
          addrs: [
            {
              addr: { ip: { ip: { $case: "ipv4", value: 0x0a000001 } }, port: 8080 },
              weight: 10000,
              tlsIdentity: {
                strategy: { $case: "dnsLikeIdentity", value: { name: "a.b" } },
                serverName: { name: "a.b" },
              },
              protocolHint: { protocol: { $case: "h2", value: {} }, opaqueTransport: { inboundPort: 4143 } },
            },
          ],
        },
      },
    });
    const addr = "0a0a 0a05 0d0100000a 10903f"; // 10.0.0.1:8080
    const weight = "18904e"; // 10000
    const tls = "2a0e 0a05 0a03612e62 2205 0a03612e62"; // dns_like_identity + server_name
    const hint = "3207 0a00 1203 08af20"; // h2 {} + opaque_transport {4143}
    const expected = hex(`0a2a 0a28 ${addr} ${weight} ${tls} ${hint}`);
    expect(encodeHex(destination.Update.encode(message).finish())).toBe(expected.toString("hex"));
    expect(destination.Update.decode(expected)).toEqual(message);
  });

  it("IPv6 addresses as two fixed64 halves", () => {
    // 2001:db8::1 → first 0x20010db800000000, last 1 (fixed64, little-endian)
    const message = destination.AddrSet.fromPartial({
      addrs: [{ ip: { ip: { $case: "ipv6", value: { first: 0x20010db800000000n, last: 1n } } }, port: 80 }],
    });
    const expected = hex("0a18 0a14 1212 0900000000b80d0120 110100000000000000 1050");
    expect(encodeHex(destination.AddrSet.encode(message).finish())).toBe(expected.toString("hex"));
    expect(destination.AddrSet.decode(expected)).toEqual(message);
  });
});
