import type { TLSSocket } from "node:tls";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  checkLeafCertificate,
  createMeshSecureContext,
  derToPem,
  MESH_SERVER_SECURE_OPTIONS,
  MESH_TLS_SETTINGS,
  type PeerCertificateFailureReason,
  parseTrustAnchors,
  peerVerification,
  verifyPeerCertificateChain,
} from "../src/index.js";
import { rememberedLeafCount } from "../src/verify.js";
import { openssl, scratchDir } from "./support/identity-server.js";
import { type MeshTlsServer, startMeshTlsServer, tlsRoundTrip } from "./support/tls-peers.js";
import {
  caExtensions,
  ecKeys,
  ed25519Keys,
  explicitParameterKeys,
  generalName,
  type Hierarchy,
  ID,
  type Keys,
  linkerdLeafExtensions,
  makeCertificate,
  makeHierarchy,
  rsaKeys,
  sanExtension,
  sequence,
  tlv,
  x509,
} from "./support/vectors.js";

interface Built {
  readonly leaf: Buffer;
  readonly chain: Buffer[];
  /** Defaults to the shared hierarchy's root. */
  readonly anchorsPem?: string;
  /** Present when the vector can also be presented in a real TLS handshake. */
  readonly leafKeyPem?: string;
}

interface Vector {
  readonly name: string;
  readonly build: (h: Hierarchy) => Promise<Built>;
  /** "ok" for the valid Linkerd-style leaves; otherwise the reason(s) we must refuse with. */
  readonly expect: "ok" | PeerCertificateFailureReason | readonly PeerCertificateFailureReason[];
  /** What `openssl verify -x509_strict -purpose sslclient` says. */
  readonly openssl: "accept" | "refuse";
  /** Required when we refuse what openssl accepts: why our verdict differs. */
  readonly why?: string;
}

const HOUR = 3_600_000;
const WHY_NAMES =
  "openssl verify checks no names; a mesh identity is exactly one lower-case DNS SAN or one SPIFFE workload URI SAN (design rule 3)";

async function leafFrom(
  h: Hierarchy,
  options: {
    keys?: Keys;
    extensions?: x509.Extension[];
    subject?: string;
    notBeforeMs?: number;
    notAfterMs?: number;
    signingAlgorithm?: { name: string; hash: string };
    issuer?: { certificate: x509.X509Certificate; keys: Keys };
    chain?: x509.X509Certificate[];
  } = {},
): Promise<Built> {
  const keys = options.keys ?? (await ecKeys());
  const leaf = await makeCertificate({
    keys,
    issuer: options.issuer ?? h.issuer,
    extensions: options.extensions ?? linkerdLeafExtensions(),
    ...(options.subject === undefined ? {} : { subject: options.subject }),
    ...(options.notBeforeMs === undefined ? {} : { notBeforeMs: options.notBeforeMs }),
    ...(options.notAfterMs === undefined ? {} : { notAfterMs: options.notAfterMs }),
    ...(options.signingAlgorithm === undefined ? {} : { signingAlgorithm: options.signingAlgorithm }),
  });
  return {
    leaf: Buffer.from(leaf.rawData),
    chain: (options.chain ?? [h.issuer.certificate]).map((certificate) => Buffer.from(certificate.rawData)),
    leafKeyPem: keys.privateKeyPem,
  };
}

const withSan = (h: Hierarchy, names: Uint8Array[]) =>
  leafFrom(h, { extensions: linkerdLeafExtensions(sanExtension(names)) });

const customExtension = (oid: string, critical: boolean, value: Uint8Array) =>
  new x509.Extension(oid, critical, value);

/** An intermediate CA under the shared issuer's root, with the given extensions. */
async function intermediate(
  h: Hierarchy,
  extensions: x509.Extension[],
  subject = "CN=intermediate.linkerd.cluster.local",
) {
  const keys = await ecKeys();
  const certificate = await makeCertificate({ subject, keys, issuer: h.root, extensions });
  return { certificate, keys };
}

const VECTORS: Vector[] = [
  // ---- accepted ----
  { name: "valid Linkerd-style leaf", expect: "ok", openssl: "accept", build: (h) => leafFrom(h) },
  {
    name: "valid leaf, chain also carries the root",
    expect: "ok",
    openssl: "accept",
    build: (h) => leafFrom(h, { chain: [h.issuer.certificate, h.root.certificate] }),
  },
  {
    name: "valid leaf with empty subject and critical SAN (RFC 5280)",
    expect: "ok",
    openssl: "accept",
    build: (h) =>
      leafFrom(h, {
        subject: "",
        extensions: linkerdLeafExtensions(sanExtension([generalName.dns(ID)], true)),
      }),
  },
  // ---- validity ----
  {
    name: "expired leaf",
    expect: "expired",
    openssl: "refuse",
    build: (h) => leafFrom(h, { notBeforeMs: Date.now() - 48 * HOUR, notAfterMs: Date.now() - HOUR }),
  },
  {
    name: "leaf not yet valid",
    expect: "not-yet-valid",
    openssl: "refuse",
    build: (h) => leafFrom(h, { notBeforeMs: Date.now() + HOUR, notAfterMs: Date.now() + 48 * HOUR }),
  },
  {
    name: "expired issuer",
    expect: "expired",
    openssl: "refuse",
    build: async () => {
      const expired = await makeHierarchy({ issuerNotAfterMs: Date.now() - 1000 });
      return { ...(await leafFrom(expired)), anchorsPem: expired.anchorsPem };
    },
  },
  {
    name: "expired trust anchor",
    expect: "expired",
    openssl: "refuse",
    build: async () => {
      const expired = await makeHierarchy({ rootNotAfterMs: Date.now() - 1000 });
      return { ...(await leafFrom(expired)), anchorsPem: expired.anchorsPem };
    },
  },
  // ---- path ----
  {
    name: "wrong issuer: same issuer name under an unrelated root",
    expect: "unknown-issuer",
    openssl: "refuse",
    build: async () => leafFrom(await makeHierarchy()),
  },
  {
    name: "forged signature: issuer name and AKI copied, signed by another key",
    expect: "bad-signature",
    openssl: "refuse",
    build: async (h) => {
      const forger = await ecKeys();
      return leafFrom(h, { issuer: { certificate: h.issuer.certificate, keys: forger } });
    },
  },
  {
    name: "self-signed leaf",
    expect: "self-signed",
    openssl: "refuse",
    build: async () => {
      const keys = await ecKeys();
      const leaf = await makeCertificate({ keys, extensions: linkerdLeafExtensions() });
      return { leaf: Buffer.from(leaf.rawData), chain: [], leafKeyPem: keys.privateKeyPem };
    },
  },
  {
    name: "leaf is a CA (basicConstraints CA:TRUE)",
    expect: "leaf-is-ca",
    openssl: "accept",
    why: "openssl verify lets a CA certificate be an end entity; a Linkerd leaf is never a CA",
    build: (h) =>
      leafFrom(h, {
        extensions: [
          new x509.BasicConstraintsExtension(true, undefined, true),
          new x509.KeyUsagesExtension(
            x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment,
            true,
          ),
          new x509.ExtendedKeyUsageExtension([
            x509.ExtendedKeyUsage.serverAuth,
            x509.ExtendedKeyUsage.clientAuth,
          ]),
          sanExtension([generalName.dns(ID)]),
        ],
      }),
  },
  {
    name: "pathLenConstraint violated (issuer pathlen 0 signs another CA)",
    expect: "path-length-exceeded",
    openssl: "refuse",
    build: async (h) => {
      const subKeys = await ecKeys();
      const sub = await makeCertificate({
        subject: "CN=sub.identity.linkerd.cluster.local",
        keys: subKeys,
        issuer: h.issuer,
        extensions: caExtensions(),
      });
      return leafFrom(h, { issuer: { certificate: sub, keys: subKeys }, chain: [sub, h.issuer.certificate] });
    },
  },
  {
    name: "issuer is not a CA (CA:FALSE)",
    expect: ["issuer-not-ca", "unknown-issuer"],
    openssl: "refuse",
    build: async (h) => {
      const notCa = await intermediate(h, [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true),
      ]);
      return leafFrom(h, { issuer: notCa, chain: [notCa.certificate] });
    },
  },
  {
    name: "issuer without basicConstraints",
    expect: ["issuer-not-ca", "unknown-issuer"],
    openssl: "refuse",
    build: async (h) => {
      const noBasic = await intermediate(h, [
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true),
      ]);
      return leafFrom(h, { issuer: noBasic, chain: [noBasic.certificate] });
    },
  },
  {
    name: "issuer keyUsage without keyCertSign",
    expect: ["issuer-not-ca", "unknown-issuer"],
    openssl: "refuse",
    build: async (h) => {
      const noCertSign = await intermediate(h, caExtensions(0, x509.KeyUsageFlags.digitalSignature));
      return leafFrom(h, { issuer: noCertSign, chain: [noCertSign.certificate] });
    },
  },
  {
    name: "issuer with an unknown critical extension",
    expect: "unknown-critical-extension",
    openssl: "refuse",
    build: async (h) => {
      const odd = await intermediate(h, [
        ...caExtensions(0),
        customExtension("1.3.6.1.4.1.99999.1", true, tlv(0x05, Buffer.alloc(0))),
      ]);
      return leafFrom(h, { issuer: odd, chain: [odd.certificate] });
    },
  },
  {
    name: "issuer EKU excludes clientAuth",
    expect: "extended-key-usage",
    openssl: "refuse",
    build: async (h) => {
      const serverOnly = await intermediate(h, [
        ...caExtensions(0),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      ]);
      return leafFrom(h, { issuer: serverOnly, chain: [serverOnly.certificate] });
    },
  },
  {
    name: "issuer with an RSA-1024 key",
    expect: "weak-key",
    openssl: "accept",
    why: "openssl verify runs at security level 1 where RSA-1024 passes; we require ≥ 2048-bit RSA or ECDSA issuers",
    build: async (h) => {
      const weak = await rsaKeys(1024);
      const certificate = await makeCertificate({
        subject: "CN=weak.linkerd.cluster.local",
        keys: weak,
        issuer: h.root,
        extensions: caExtensions(0),
      });
      return leafFrom(h, {
        issuer: { certificate, keys: weak },
        chain: [certificate],
        signingAlgorithm: undefined as never,
      });
    },
  },
  {
    name: "name-constraint violation (issuer permits only other.local)",
    expect: "name-constraints",
    openssl: "refuse",
    build: async (h) => {
      const constrained = await intermediate(h, [
        ...caExtensions(0),
        customExtension("2.5.29.30", true, sequence(tlv(0xa0, sequence(generalName.dns("other.local"))))),
      ]);
      return leafFrom(h, { issuer: constrained, chain: [constrained.certificate] });
    },
  },
  {
    name: "name-constraint exclusion (issuer excludes cluster.local)",
    expect: "name-constraints",
    openssl: "refuse",
    build: async (h) => {
      const constrained = await intermediate(h, [
        ...caExtensions(0),
        customExtension("2.5.29.30", true, sequence(tlv(0xa1, sequence(generalName.dns("cluster.local"))))),
      ]);
      return leafFrom(h, { issuer: constrained, chain: [constrained.certificate] });
    },
  },
  {
    name: "chain of 10 intermediates",
    expect: "chain-too-long",
    openssl: "refuse",
    build: async (h) => {
      let parent = h.root;
      const chain: x509.X509Certificate[] = [];
      for (let index = 0; index < 10; index += 1) {
        const keys = await ecKeys();
        const certificate = await makeCertificate({
          subject: `CN=level-${index}`,
          keys,
          issuer: parent,
          extensions: caExtensions(),
        });
        chain.unshift(certificate);
        parent = { certificate, keys };
      }
      return leafFrom(h, { issuer: parent, chain });
    },
  },
  {
    name: "path-building bomb: 50 cross-signed intermediates",
    expect: "chain-too-long",
    openssl: "refuse",
    build: async (_h) => {
      const keys = await Promise.all(Array.from({ length: 50 }, () => ecKeys()));
      const certificates: x509.X509Certificate[] = [];
      for (let index = 0; index < 50; index += 1) {
        const signer = keys[(index + 1) % 50] as Keys;
        certificates.push(
          await makeCertificate({
            subject: "CN=bomb",
            keys: keys[index] as Keys,
            issuer: {
              certificate: { subjectName: new x509.Name("CN=bomb"), publicKey: undefined } as never,
              keys: signer,
            },
            extensions: caExtensions(),
            noKeyIdentifiers: true,
          }),
        );
      }
      const leafKeys = await ecKeys();
      const leaf = await makeCertificate({
        keys: leafKeys,
        issuer: { certificate: { subjectName: new x509.Name("CN=bomb") } as never, keys: keys[0] as Keys },
        extensions: linkerdLeafExtensions(),
        noKeyIdentifiers: true,
      });
      return {
        leaf: Buffer.from(leaf.rawData),
        chain: certificates.map((certificate) => Buffer.from(certificate.rawData)),
        leafKeyPem: leafKeys.privateKeyPem,
      };
    },
  },
  // ---- key usage ----
  {
    name: "leaf without extendedKeyUsage",
    expect: "extended-key-usage",
    openssl: "accept",
    why: "an absent EKU means any purpose to openssl; Linkerd leaves always carry serverAuth+clientAuth and we require it",
    build: (h) =>
      leafFrom(h, {
        extensions: linkerdLeafExtensions().filter(
          (item) => !(item instanceof x509.ExtendedKeyUsageExtension),
        ),
      }),
  },
  {
    name: "leaf EKU serverAuth only, used as a client",
    expect: "extended-key-usage",
    openssl: "refuse",
    build: (h) =>
      leafFrom(h, {
        extensions: [
          ...linkerdLeafExtensions().filter((item) => !(item instanceof x509.ExtendedKeyUsageExtension)),
          new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
        ],
      }),
  },
  {
    name: "leaf EKU codeSigning",
    expect: "extended-key-usage",
    openssl: "refuse",
    build: (h) =>
      leafFrom(h, {
        extensions: [
          ...linkerdLeafExtensions().filter((item) => !(item instanceof x509.ExtendedKeyUsageExtension)),
          new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.codeSigning]),
        ],
      }),
  },
  {
    name: "leaf keyUsage without digitalSignature",
    expect: "key-usage",
    openssl: "refuse",
    build: (h) =>
      leafFrom(h, {
        extensions: [
          ...linkerdLeafExtensions().filter((item) => !(item instanceof x509.KeyUsagesExtension)),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyEncipherment, true),
        ],
      }),
  },
  {
    name: "leaf without keyUsage",
    expect: "key-usage",
    openssl: "accept",
    why: "an absent keyUsage allows everything to openssl; Linkerd leaves always carry digitalSignature",
    build: (h) =>
      leafFrom(h, {
        extensions: linkerdLeafExtensions().filter((item) => !(item instanceof x509.KeyUsagesExtension)),
      }),
  },
  {
    name: "leaf keyUsage includes keyCertSign",
    expect: "key-usage",
    openssl: "refuse",
    build: (h) =>
      leafFrom(h, {
        extensions: [
          ...linkerdLeafExtensions().filter((item) => !(item instanceof x509.KeyUsagesExtension)),
          new x509.KeyUsagesExtension(
            x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyCertSign,
            true,
          ),
        ],
      }),
  },
  // ---- subjectAltName ----
  {
    name: "no SAN, identity only in the CN",
    expect: "missing-san",
    openssl: "accept",
    why: WHY_NAMES,
    build: (h) => leafFrom(h, { extensions: linkerdLeafExtensions().slice(0, 3) }),
  },
  {
    name: "two DNS SANs",
    expect: "san-count",
    openssl: "accept",
    why: WHY_NAMES,
    build: (h) => withSan(h, [generalName.dns(ID), generalName.dns("evil.example")]),
  },
  {
    name: "DNS SAN plus a spiffe URI SAN",
    expect: "san-count",
    openssl: "accept",
    why: WHY_NAMES,
    build: (h) => withSan(h, [generalName.dns(ID), generalName.uri("spiffe://cluster.local/ns/shop/sa/web")]),
  },
  {
    name: "URI SAN only, a bare SPIFFE trust domain (names no workload)",
    expect: "san-invalid-uri",
    openssl: "accept",
    why: WHY_NAMES,
    build: (h) => withSan(h, [generalName.uri(`spiffe://${ID}`)]),
  },
  ...(
    [
      ["non-spiffe URI SAN", "https://web.shop.svc.cluster.local/"],
      ["upper-case SPIFFE scheme", "SPIFFE://cluster.local/ns/shop/sa/web"],
      ["SPIFFE ID with userinfo", "spiffe://admin@cluster.local/ns/shop/sa/web"],
      ["SPIFFE ID with a port", "spiffe://cluster.local:443/ns/shop/sa/web"],
      ["SPIFFE ID with a query", "spiffe://cluster.local/ns/shop/sa/web?x=1"],
      ["SPIFFE ID with a fragment", "spiffe://cluster.local/ns/shop/sa/web#x"],
      ["SPIFFE ID with percent-encoding", "spiffe://cluster.local/ns/shop/sa/w%65b"],
      ["SPIFFE ID with a dot-dot segment", "spiffe://cluster.local/ns/shop/../kube-system/sa/admin"],
      ["SPIFFE ID with an empty segment", "spiffe://cluster.local/ns//sa/web"],
      ["SPIFFE ID with a trailing slash", "spiffe://cluster.local/ns/shop/sa/web/"],
      ["SPIFFE ID with an upper-case trust domain", "spiffe://Cluster.Local/ns/shop/sa/web"],
      ["SPIFFE ID with a NUL byte", "spiffe://cluster.local/ns/shop/sa/web\u0000.evil"],
      [
        "SPIFFE ID smuggling a second name",
        "spiffe://cluster.local/ns/shop/sa/web, URI:spiffe://cluster.local/ns/kube-system/sa/admin",
      ],
      ["SPIFFE ID longer than 2048 bytes", `spiffe://cluster.local/${"a".repeat(2100)}`],
      ["SPIFFE ID with an empty trust domain", "spiffe:///ns/shop/sa/web"],
    ] as const
  ).map(
    ([name, uri]): Vector => ({
      name,
      expect: "san-invalid-uri",
      openssl: "accept",
      why: WHY_NAMES,
      build: (h) => withSan(h, [generalName.uri(uri)]),
    }),
  ),
  {
    name: "two SPIFFE URI SANs",
    expect: "san-count",
    openssl: "accept",
    why: WHY_NAMES,
    build: (h) =>
      withSan(h, [
        generalName.uri("spiffe://cluster.local/ns/shop/sa/web"),
        generalName.uri("spiffe://cluster.local/ns/kube-system/sa/admin"),
      ]),
  },
  {
    name: "IP SAN only",
    expect: "san-not-dns",
    openssl: "accept",
    why: WHY_NAMES,
    build: (h) => withSan(h, [generalName.ip([10, 0, 0, 1])]),
  },
  {
    name: "email SAN only",
    expect: "san-not-dns",
    openssl: "accept",
    why: WHY_NAMES,
    build: (h) => withSan(h, [generalName.email(`web@${ID}`)]),
  },
  {
    name: "otherName (UPN) SAN only",
    expect: "san-not-dns",
    openssl: "accept",
    why: WHY_NAMES,
    build: (h) => withSan(h, [generalName.other(ID)]),
  },
  {
    name: "directoryName SAN only",
    expect: "san-not-dns",
    openssl: "accept",
    why: WHY_NAMES,
    build: (h) => withSan(h, [generalName.directory(ID)]),
  },
  { name: "empty SAN sequence", expect: "san-count", openssl: "refuse", build: (h) => withSan(h, []) },
  {
    name: "DNS SAN with ', ' smuggling a second name (CVE-2021-44532 style)",
    expect: "san-invalid-dns",
    openssl: "accept",
    why: WHY_NAMES,
    build: (h) =>
      withSan(h, [
        generalName.dns(`${ID}, DNS:admin.kube-system.serviceaccount.identity.linkerd.cluster.local`),
      ]),
  },
  {
    name: "DNS SAN with quotes",
    expect: "san-invalid-dns",
    openssl: "accept",
    why: WHY_NAMES,
    build: (h) => withSan(h, [generalName.dns(`"${ID}"`)]),
  },
  {
    name: "DNS SAN with a NUL byte",
    expect: "san-invalid-dns",
    openssl: "accept",
    why: WHY_NAMES,
    build: (h) =>
      withSan(h, [
        generalName.dns(Buffer.concat([Buffer.from(ID), Buffer.from([0]), Buffer.from(".evil.example")])),
      ]),
  },
  {
    name: "DNS SAN with UTF-8 (non-IA5) bytes",
    expect: "san-invalid-dns",
    openssl: "accept",
    why: WHY_NAMES,
    build: (h) =>
      withSan(h, [
        generalName.dns(Buffer.from(`wéb.shop.serviceaccount.identity.linkerd.cluster.local`, "utf8")),
      ]),
  },
  {
    name: "wildcard DNS SAN",
    expect: "san-invalid-dns",
    openssl: "accept",
    why: WHY_NAMES,
    build: (h) => withSan(h, [generalName.dns("*.shop.serviceaccount.identity.linkerd.cluster.local")]),
  },
  {
    // Linkerd accepts it and lower-cases DNS identities (DNS names are case-insensitive): the identity is ID.
    name: "upper-case DNS SAN",
    expect: "ok",
    openssl: "accept",
    build: (h) => withSan(h, [generalName.dns(ID.toUpperCase())]),
  },
  {
    name: "DNS SAN with a trailing dot",
    expect: "san-invalid-dns",
    openssl: "accept",
    why: WHY_NAMES,
    build: (h) => withSan(h, [generalName.dns(`${ID}.`)]),
  },
  {
    name: "empty DNS SAN",
    expect: "san-invalid-dns",
    openssl: "accept",
    why: WHY_NAMES,
    build: (h) => withSan(h, [generalName.dns("")]),
  },
  {
    name: "254-byte DNS SAN",
    expect: "san-invalid-dns",
    openssl: "accept",
    why: WHY_NAMES,
    build: (h) => withSan(h, [generalName.dns(`${"a".repeat(254 - ID.length - 1)}.${ID}`)]),
  },
  {
    name: "1 KiB DNS label",
    expect: "san-invalid-dns",
    openssl: "accept",
    why: WHY_NAMES,
    build: (h) => withSan(h, [generalName.dns(`${"a".repeat(1024)}.cluster.local`)]),
  },
  {
    name: "valid leaf for another identity",
    expect: "identity-mismatch",
    openssl: "accept",
    why: WHY_NAMES,
    build: (h) =>
      withSan(h, [generalName.dns("admin.kube-system.serviceaccount.identity.linkerd.cluster.local")]),
  },
  {
    name: "two subjectAltName extensions",
    expect: "malformed",
    openssl: "refuse",
    build: (h) =>
      leafFrom(h, {
        extensions: [
          ...linkerdLeafExtensions(),
          customExtension("2.5.29.17", false, sequence(generalName.dns("evil.example"))),
        ],
      }),
  },
  // ---- keys and signatures ----
  {
    name: "RSA-1024 leaf",
    expect: "leaf-key-not-p256",
    openssl: "accept",
    why: "Linkerd leaves are ECDSA P-256 only (contract §3.4, design rule 3)",
    build: async (h) => leafFrom(h, { keys: await rsaKeys(1024) }),
  },
  {
    name: "RSA-2048 leaf",
    expect: "leaf-key-not-p256",
    openssl: "accept",
    why: "Linkerd leaves are ECDSA P-256 only",
    build: async (h) => leafFrom(h, { keys: await rsaKeys(2048) }),
  },
  {
    name: "P-384 leaf",
    expect: "leaf-key-not-p256",
    openssl: "accept",
    why: "verdict: refused. linkerd2-proxy would verify a P-384 peer, but Linkerd's identity issuance only ever signs P-256 CSRs, so a P-384 leaf never comes from a Linkerd control plane",
    build: async (h) => leafFrom(h, { keys: await ecKeys("P-384") }),
  },
  {
    name: "Ed25519 leaf",
    expect: "leaf-key-not-p256",
    openssl: "accept",
    why: "Linkerd leaves are ECDSA P-256 only",
    build: async (h) => leafFrom(h, { keys: await ed25519Keys() }),
  },
  {
    name: "leaf key with explicit EC parameters",
    expect: "explicit-ec-parameters",
    openssl: "refuse",
    build: async (h) => leafFrom(h, { keys: await explicitParameterKeys() }),
  },
  {
    name: "SHA-1 signature (ecdsa-with-SHA1)",
    expect: "weak-signature-algorithm",
    openssl: "accept",
    why: "openssl verify's default security level does not police signature digests; SHA-1 is collision-broken and we refuse it",
    build: (h) => leafFrom(h, { signingAlgorithm: { name: "ECDSA", hash: "SHA-1" } }),
  },
  {
    name: "tampered signature value",
    expect: "bad-signature",
    openssl: "refuse",
    build: async (h) => {
      const built = await leafFrom(h);
      const leaf = Buffer.from(built.leaf);
      leaf[leaf.length - 3] = (leaf[leaf.length - 3] as number) ^ 0x01;
      return { ...built, leaf };
    },
  },
  {
    name: "outer signature algorithm differs from the TBS one",
    expect: ["malformed", "bad-signature"],
    openssl: "refuse",
    build: async (h) => {
      const built = await leafFrom(h);
      const leaf = Buffer.from(built.leaf);
      // ecdsa-with-SHA256 appears twice; turn the outer one into ecdsa-with-SHA384.
      const oid = Buffer.from("06082a8648ce3d040302", "hex");
      const outer = leaf.lastIndexOf(oid);
      leaf[outer + oid.length - 1] = 0x03;
      return { ...built, leaf };
    },
  },
  // ---- extensions and encodings ----
  {
    name: "unknown critical extension on the leaf",
    expect: "unknown-critical-extension",
    openssl: "refuse",
    build: (h) =>
      leafFrom(h, {
        extensions: [
          ...linkerdLeafExtensions(),
          customExtension("1.3.6.1.4.1.99999.2", true, tlv(0x05, Buffer.alloc(0))),
        ],
      }),
  },
  {
    name: "critical OID with an arc above 2^32 that truncates to subjectAltName (CVE-2025-66030 style)",
    expect: "unknown-critical-extension",
    openssl: "refuse",
    build: (h) =>
      leafFrom(h, {
        extensions: [
          ...linkerdLeafExtensions().slice(0, 3),
          customExtension("2.5.29.4294967313", true, sequence(generalName.dns(ID))),
        ],
      }),
  },
  {
    name: "non-critical OID with an arc above 2^32 instead of subjectAltName",
    expect: "missing-san",
    openssl: "accept",
    why: WHY_NAMES,
    build: (h) =>
      leafFrom(h, {
        extensions: [
          ...linkerdLeafExtensions().slice(0, 3),
          customExtension("2.5.29.4294967313", false, sequence(generalName.dns(ID))),
        ],
      }),
  },
  {
    name: "64 KiB certificate",
    expect: "too-large",
    openssl: "accept",
    why: "we refuse certificates above 16 KiB before parsing (a Linkerd leaf is ~700 bytes)",
    build: (h) =>
      leafFrom(h, {
        extensions: [
          ...linkerdLeafExtensions(),
          customExtension("1.3.6.1.4.1.99999.3", false, tlv(0x04, Buffer.alloc(64 * 1024))),
        ],
      }),
  },
  {
    name: "ASN.1 nested 10,000 deep (CVE-2025-66031 style)",
    expect: "too-large",
    openssl: "accept",
    why: "the nesting sits in an opaque non-critical extension; we refuse on size before any parsing, and our DER reader is iterative",
    build: (h) => {
      let nested: Buffer = Buffer.alloc(0);
      for (let depth = 0; depth < 10_000; depth += 1) nested = sequence(nested);
      return leafFrom(h, {
        extensions: [...linkerdLeafExtensions(), customExtension("1.3.6.1.4.1.99999.4", false, nested)],
      });
    },
  },
  {
    name: "version 1 leaf (no extensions at all)",
    expect: ["key-usage", "missing-san"],
    openssl: "accept",
    why: WHY_NAMES,
    build: async (h) => {
      // A v1 certificate made by the openssl CLI from our own key and issuer.
      const dir = await scratchDir();
      try {
        const keys = await ecKeys();
        const key = await dir.write("leaf.key", keys.privateKeyPem);
        const issuerKey = await dir.write("issuer.key", h.issuer.keys.privateKeyPem);
        const issuerCert = await dir.write("issuer.crt", h.issuer.certificate.toString("pem"));
        const csr = await openssl(["req", "-new", "-key", key, "-subj", `/CN=${ID}`]);
        const csrFile = await dir.write("leaf.csr", csr.stdout);
        const signed = await openssl([
          "x509",
          "-req",
          "-in",
          csrFile,
          "-CA",
          issuerCert,
          "-CAkey",
          issuerKey,
          "-set_serial",
          "7",
          "-days",
          "1",
          "-outform",
          "DER",
        ]);
        return {
          leaf: Buffer.from(signed.stdout, "latin1"),
          chain: [Buffer.from(h.issuer.certificate.rawData)],
          leafKeyPem: keys.privateKeyPem,
        };
      } finally {
        await dir.remove();
      }
    },
  },
  {
    name: "garbage bytes",
    expect: "malformed",
    openssl: "refuse",
    build: async () => ({ leaf: Buffer.from("not a certificate at all"), chain: [] }),
  },
  {
    name: "truncated certificate",
    expect: "malformed",
    openssl: "refuse",
    build: async (h) => {
      const built = await leafFrom(h);
      return {
        ...built,
        leaf: built.leaf.subarray(0, built.leaf.length - 10),
        leafKeyPem: undefined as never,
      };
    },
  },
  {
    name: "trailing bytes after the certificate",
    expect: "malformed",
    openssl: "accept",
    why: "`openssl x509 -inform DER` drops bytes after the certificate; we refuse input that is not exactly one DER certificate",
    build: async (h) => {
      const built = await leafFrom(h);
      return { leaf: Buffer.concat([built.leaf, Buffer.from([0, 0])]), chain: built.chain };
    },
  },
];

describe("hostile certificate suite (reliability R6)", () => {
  let h: Hierarchy;
  let dir: Awaited<ReturnType<typeof scratchDir>>;
  const built = new Map<string, Built>();

  beforeAll(async () => {
    h = await makeHierarchy();
    dir = await scratchDir();
    for (const vector of VECTORS) built.set(vector.name, await vector.build(h));
  }, 60_000);
  afterAll(() => dir.remove());

  const anchorsOf = (item: Built) => item.anchorsPem ?? h.anchorsPem;

  it("has at least 40 hostile vectors, every one refused with its reason; valid Linkerd leaves accepted", () => {
    expect(VECTORS.filter((vector) => vector.expect !== "ok").length).toBeGreaterThanOrEqual(40);
    const mismatches: string[] = [];
    for (const vector of VECTORS) {
      const item = built.get(vector.name) as Built;
      const verdict = verifyPeerCertificateChain(item.leaf, item.chain, anchorsOf(item), {
        expectedIdentity: ID,
        purpose: "client",
      });
      const got = verdict.ok ? "ok" : verdict.failure.reason;
      const wanted = typeof vector.expect === "string" ? [vector.expect] : vector.expect;
      if (!wanted.includes(got as never)) {
        mismatches.push(
          `${vector.name}: expected ${wanted.join("|")}, got ${got}${verdict.ok ? "" : ` (${verdict.failure.message})`}`,
        );
      }
    }
    expect(mismatches).toEqual([]);
  });

  it("agrees with `openssl verify`, and every disagreement is written down", async () => {
    const disagreements: string[] = [];
    const undocumented: string[] = [];
    const judge = async (vector: Vector, index: number) => {
      const item = built.get(vector.name) as Built;
      const anchors = await dir.write(`anchors-${index}.pem`, anchorsOf(item));
      const chain = await dir.write(`chain-${index}.pem`, item.chain.map((der) => derToPem(der)).join(""));
      const leaf = await dir.write(`leaf-${index}.der`, item.leaf);
      const args = ["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile", anchors];
      if (item.chain.length > 0) args.push("-untrusted", chain);
      // openssl verify reads PEM; convert the leaf first (a failure to convert is a refusal).
      const pem = await openssl(["x509", "-inform", "DER", "-in", leaf]);
      let verdict: "accept" | "refuse" = "refuse";
      if (pem.code === 0) {
        const leafPem = await dir.write(`leaf-${index}.pem`, pem.stdout);
        const result = await openssl([...args, leafPem]);
        verdict = result.code === 0 ? "accept" : "refuse";
      }
      if (verdict !== vector.openssl)
        disagreements.push(`${vector.name}: openssl says ${verdict}, table says ${vector.openssl}`);
      if (vector.expect !== "ok" && verdict === "accept" && !vector.why) undocumented.push(vector.name);
      if (vector.expect === "ok" && verdict !== "accept")
        undocumented.push(`${vector.name} (we accept, openssl refuses)`);
    };
    // A few openssl processes at a time: bounded, and fast enough on two cores.
    const queue = [...VECTORS.entries()];
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        for (let next = queue.shift(); next; next = queue.shift()) await judge(next[1], next[0]);
      }),
    );
    expect(disagreements).toEqual([]);
    expect(undocumented).toEqual([]);
  }, 120_000);

  describe("over real TLS handshakes (OpenSSL verifies the chain, then the leaf rules apply)", () => {
    const servers = new Map<string, MeshTlsServer>();
    const verifications: Map<string, ReturnType<typeof peerVerification>> = new Map();

    afterAll(async () => {
      for (const server of servers.values()) await server.close();
    });

    async function serverFor(anchorsPem: string): Promise<MeshTlsServer> {
      let server = servers.get(anchorsPem);
      if (!server) {
        const serverLeaf = await leafFrom(h);
        // The same context and server settings an IdentityProvider hands out.
        const context = createMeshSecureContext({
          privateKeyPem: serverLeaf.leafKeyPem as string,
          certificateChainPem: derToPem(serverLeaf.leaf) + h.issuer.certificate.toString("pem"),
          trustAnchorsPem: anchorsPem,
          role: "server",
        });
        server = await startMeshTlsServer(
          {
            ...MESH_TLS_SETTINGS,
            secureOptions: MESH_SERVER_SECURE_OPTIONS,
            requestCert: true,
            rejectUnauthorized: false,
            SNICallback: (_name, callback) => callback(null, context),
          },
          (socket: TLSSocket) => {
            const result = peerVerification(socket);
            verifications.set(socket.getPeerX509Certificate()?.fingerprint256 ?? "none", result);
            return result.identity;
          },
        );
        servers.set(anchorsPem, server);
      }
      return server;
    }

    it("yields a mesh identity only for the valid leaves", async () => {
      const wrong: string[] = [];
      let presented = 0;
      for (const vector of VECTORS) {
        const item = built.get(vector.name) as Built;
        if (!item.leafKeyPem) continue;
        const server = await serverFor(anchorsOf(item));
        const result = await tlsRoundTrip(server.port, {
          key: item.leafKeyPem,
          cert: [item.leaf, ...item.chain].map((der) => derToPem(der)).join(""),
          servername: ID,
          minVersion: "TLSv1.3",
          rejectUnauthorized: false,
        }).catch((error: Error) => ({ ok: false as const, error }));
        presented += 1;
        const accepted = result.ok && result.line === ID;
        if (accepted !== (vector.expect === "ok")) {
          wrong.push(
            `${vector.name}: ${result.ok ? result.line : `handshake failed: ${result.error.message}`}`,
          );
        }
      }
      expect(presented).toBeGreaterThanOrEqual(40);
      expect(wrong).toEqual([]);
    }, 120_000);
  });

  it("accepts exactly one SPIFFE workload URI SAN (Linkerd 2.15+ ExternalWorkloads), in the chain check and over TLS", async () => {
    const SPIFFE = "spiffe://root.linkerd.cluster.local/proxy/external-vm_1.shop";
    const item = await withSan(h, [generalName.uri(SPIFFE)]);
    const verdict = verifyPeerCertificateChain(item.leaf, item.chain, h.anchorsPem, {
      expectedIdentity: SPIFFE,
      purpose: "client",
    });
    expect(verdict.ok && verdict.identity).toBe(SPIFFE);
    expect(checkLeafCertificate(item.leaf).ok).toBe(true);
    const mismatch = verifyPeerCertificateChain(item.leaf, item.chain, h.anchorsPem, {
      expectedIdentity: ID,
    });
    expect(mismatch.ok ? "ok" : mismatch.failure.reason).toBe("identity-mismatch");
    // URI name constraints of an issuer apply to the trust domain (RFC 5280 §4.2.1.10).
    const constrained = await intermediate(h, [
      ...caExtensions(0),
      customExtension("2.5.29.30", true, sequence(tlv(0xa0, sequence(generalName.uri("other.local"))))),
    ]);
    const outside = await leafFrom(h, {
      issuer: constrained,
      chain: [constrained.certificate],
      extensions: linkerdLeafExtensions(sanExtension([generalName.uri(SPIFFE)])),
    });
    const refused = verifyPeerCertificateChain(outside.leaf, outside.chain, h.anchorsPem, {
      expectedIdentity: SPIFFE,
    });
    expect(refused.ok ? "ok" : refused.failure.reason).toBe("name-constraints");
    // The same leaf presented in a real handshake: the server side names the peer by its SPIFFE ID.
    const serverLeaf = await leafFrom(h);
    const context = createMeshSecureContext({
      privateKeyPem: serverLeaf.leafKeyPem as string,
      certificateChainPem: derToPem(serverLeaf.leaf) + h.issuer.certificate.toString("pem"),
      trustAnchorsPem: h.anchorsPem,
      role: "server",
    });
    const server = await startMeshTlsServer(
      {
        ...MESH_TLS_SETTINGS,
        secureOptions: MESH_SERVER_SECURE_OPTIONS,
        requestCert: true,
        rejectUnauthorized: false,
        SNICallback: (_name, callback) => callback(null, context),
      },
      (socket: TLSSocket) => peerVerification(socket).identity,
    );
    try {
      const result = await tlsRoundTrip(server.port, {
        key: item.leafKeyPem as string,
        cert: [item.leaf, ...item.chain].map((der) => derToPem(der)).join(""),
        servername: ID,
        minVersion: "TLSv1.3",
        rejectUnauthorized: false,
      });
      expect(result.ok && result.line).toBe(SPIFFE);
    } finally {
      await server.close();
    }
  });

  it("remembers leaves that passed by their exact bytes and purpose, and answers as a first check would (S6)", async () => {
    // Same length as ID, so one buffer can hold either leaf.
    const OTHER = "api.shop.serviceaccount.identity.linkerd.cluster.local";
    const keys = await ecKeys();
    const web = await leafFrom(h, { keys });
    const api = await leafFrom(h, {
      keys,
      extensions: linkerdLeafExtensions(sanExtension([generalName.dns(OTHER)])),
    });
    const first = checkLeafCertificate(web.leaf);
    expect(first).toMatchObject({ ok: true, identity: ID });
    expect(Object.isFrozen(first)).toBe(true);
    expect(checkLeafCertificate(Uint8Array.from(web.leaf))).toEqual(first);
    // An expected identity and a size cap apply to a remembered leaf as to a new one.
    const mismatch = checkLeafCertificate(web.leaf, { expectedIdentity: OTHER });
    const chainMismatch = verifyPeerCertificateChain(web.leaf, web.chain, h.anchorsPem, {
      expectedIdentity: OTHER,
    });
    expect(chainMismatch.ok).toBe(false);
    expect(mismatch).toEqual(chainMismatch);
    expect(checkLeafCertificate(web.leaf, { expectedIdentity: ID })).toEqual(first);
    const capped = checkLeafCertificate(web.leaf, { maxCertificateBytes: web.leaf.byteLength - 1 });
    expect(capped.ok ? "ok" : capped.failure.reason).toBe("too-large");
    // Memory reused for other bytes is judged by the bytes it holds now.
    const scratch = Buffer.alloc(Math.max(web.leaf.byteLength, api.leaf.byteLength));
    web.leaf.copy(scratch);
    expect(checkLeafCertificate(scratch.subarray(0, web.leaf.byteLength))).toMatchObject({ identity: ID });
    api.leaf.copy(scratch);
    expect(checkLeafCertificate(scratch.subarray(0, api.leaf.byteLength))).toMatchObject({ identity: OTHER });
    // The purpose is part of what is remembered: a serverAuth-only leaf passes as a server, not a client.
    const serverOnly = (built.get("leaf EKU serverAuth only, used as a client") as Built).leaf;
    expect(checkLeafCertificate(serverOnly, { purpose: "server" }).ok).toBe(true);
    const asClient = checkLeafCertificate(serverOnly, { purpose: "client" });
    expect(asClient.ok ? "ok" : asClient.failure.reason).toBe("extended-key-usage");
    // Refused leaves are not remembered, and passed ones up to a bound.
    const before = rememberedLeafCount();
    const refused = (built.get("leaf EKU codeSigning") as Built).leaf;
    expect(checkLeafCertificate(refused).ok).toBe(false);
    expect(rememberedLeafCount()).toBe(before);
    for (let i = 0; i < 300; i += 1) {
      const name = `w${i}.shop.serviceaccount.identity.linkerd.cluster.local`;
      const leaf = await leafFrom(h, {
        keys,
        extensions: linkerdLeafExtensions(sanExtension([generalName.dns(name)])),
      });
      expect(checkLeafCertificate(leaf.leaf)).toMatchObject({ ok: true, identity: name });
    }
    expect(rememberedLeafCount()).toBe(256);
  });

  it("never throws and never accepts on random or mutated input", () => {
    const valid = built.get("valid Linkerd-style leaf") as Built;
    const anchors = parseTrustAnchors(h.anchorsPem);
    expect(verifyPeerCertificateChain(valid.leaf, valid.chain, anchors, { expectedIdentity: ID }).ok).toBe(
      true,
    );
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 2048 }),
        fc.array(fc.uint8Array({ maxLength: 512 }), { maxLength: 3 }),
        (leaf, chain) => {
          expect(verifyPeerCertificateChain(leaf, chain, anchors).ok).toBe(false);
          expect(checkLeafCertificate(leaf).ok).toBe(false);
        },
      ),
      { numRuns: 300 },
    );
    fc.assert(
      fc.property(
        fc.nat({ max: valid.leaf.length - 1 }),
        fc.integer({ min: 1, max: 255 }),
        (offset, flip) => {
          const mutated = Buffer.from(valid.leaf);
          mutated[offset] = (mutated[offset] as number) ^ flip;
          expect(verifyPeerCertificateChain(mutated, valid.chain, anchors, { expectedIdentity: ID }).ok).toBe(
            false,
          );
        },
      ),
      { numRuns: 500 },
    );
  });
});
