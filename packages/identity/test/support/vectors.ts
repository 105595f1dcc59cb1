import { webcrypto } from "node:crypto";
import * as x509 from "@peculiar/x509";
import { derToPem } from "../../src/index.js";
import { openssl, scratchDir } from "./identity-server.js";

/**
 * Generators for hostile certificates (reliability R6). Everything is built at test time with
 * WebCrypto + @peculiar/x509 (as a generator only) or the openssl CLI; nothing is checked in.
 */

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

type CryptoKeyPair = webcrypto.CryptoKeyPair;
const subtle = webcrypto.subtle;

export const ID = "web.shop.serviceaccount.identity.linkerd.cluster.local";
const ECDSA_SHA256 = { name: "ECDSA", hash: "SHA-256" } as const;
const HOUR = 3_600_000;

export interface Keys {
  readonly pair: CryptoKeyPair;
  /** PKCS#8 PEM (undefined when the key cannot be exported in PKCS#8, e.g. explicit parameters from the CLI). */
  readonly privateKeyPem: string;
  /** Raw SPKI to embed (lets a vector carry a key WebCrypto cannot import). */
  readonly spki?: Buffer;
}

export async function ecKeys(namedCurve: "P-256" | "P-384" = "P-256"): Promise<Keys> {
  const pair = (await subtle.generateKey({ name: "ECDSA", namedCurve }, true, [
    "sign",
    "verify",
  ])) as CryptoKeyPair;
  return {
    pair,
    privateKeyPem: derToPem(new Uint8Array(await subtle.exportKey("pkcs8", pair.privateKey)), "PRIVATE KEY"),
  };
}

export async function rsaKeys(modulusLength: number): Promise<Keys> {
  const algorithm = {
    name: "RSASSA-PKCS1-v1_5",
    modulusLength,
    publicExponent: new Uint8Array([1, 0, 1]),
    hash: "SHA-256",
  };
  const pair = (await subtle.generateKey(algorithm, true, ["sign", "verify"])) as CryptoKeyPair;
  return {
    pair,
    privateKeyPem: derToPem(new Uint8Array(await subtle.exportKey("pkcs8", pair.privateKey)), "PRIVATE KEY"),
  };
}

export async function ed25519Keys(): Promise<Keys> {
  const pair = (await subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"])) as CryptoKeyPair;
  return {
    pair,
    privateKeyPem: derToPem(new Uint8Array(await subtle.exportKey("pkcs8", pair.privateKey)), "PRIVATE KEY"),
  };
}

/** An EC P-256 key spelled with explicit curve parameters (openssl CLI); only its SPKI is embedded. */
export async function explicitParameterKeys(): Promise<Keys> {
  const dir = await scratchDir();
  try {
    const keyFile = `${dir.path}/explicit.pem`;
    const generated = await openssl([
      "ecparam",
      "-name",
      "prime256v1",
      "-param_enc",
      "explicit",
      "-genkey",
      "-noout",
      "-out",
      keyFile,
    ]);
    if (generated.code !== 0) throw new Error(generated.stderr);
    const spki = await openssl(["pkey", "-in", keyFile, "-pubout", "-outform", "DER"], {});
    const pem = await openssl(["pkey", "-in", keyFile]);
    const placeholder = await ecKeys();
    return { pair: placeholder.pair, privateKeyPem: pem.stdout, spki: Buffer.from(spki.stdout, "latin1") };
  } finally {
    await dir.remove();
  }
}

// ---- raw DER for extension values the generator library would refuse to build ----

export function tlv(tag: number, content: Uint8Array): Buffer {
  const length = content.byteLength;
  let header: number[];
  if (length < 0x80) header = [tag, length];
  else {
    const bytes: number[] = [];
    for (let rest = length; rest > 0; rest = Math.floor(rest / 256)) bytes.unshift(rest % 256);
    header = [tag, 0x80 | bytes.length, ...bytes];
  }
  return Buffer.concat([Buffer.from(header), content]);
}

export const sequence = (...items: Uint8Array[]) => tlv(0x30, Buffer.concat(items));
const latin1 = (text: string) => Buffer.from(text, "latin1");

export const generalName = {
  dns: (value: string | Uint8Array) => tlv(0x82, typeof value === "string" ? latin1(value) : value),
  uri: (value: string) => tlv(0x86, latin1(value)),
  ip: (bytes: number[]) => tlv(0x87, Buffer.from(bytes)),
  email: (value: string) => tlv(0x81, latin1(value)),
  /** otherName: SEQUENCE-like [0] { OID 1.3.6.1.4.1.311.20.2.3 (UPN), [0] UTF8String } */
  other: (value: string) =>
    tlv(
      0xa0,
      Buffer.concat([
        tlv(0x06, Buffer.from("2b0601040182371402", "hex")),
        tlv(0xa0, tlv(0x0c, Buffer.from(value))),
      ]),
    ),
  directory: (cn: string) =>
    tlv(
      0xa4,
      sequence(tlv(0x31, sequence(tlv(0x06, Buffer.from("550403", "hex")), tlv(0x0c, Buffer.from(cn))))),
    ),
};

export function sanExtension(names: Uint8Array[], critical = false): x509.Extension {
  return new x509.Extension("2.5.29.17", critical, sequence(...names));
}

export interface CertificateSpec {
  readonly subject?: string;
  readonly keys: Keys;
  /** Signing certificate and keys; omitted = self-signed. */
  readonly issuer?: { readonly certificate: x509.X509Certificate; readonly keys: Keys };
  readonly notBeforeMs?: number;
  readonly notAfterMs?: number;
  readonly extensions: x509.Extension[];
  readonly signingAlgorithm?: Algorithm | EcdsaParams;
  /** Skip the automatic AKI (from the issuer) and SKI (for CAs). */
  readonly noKeyIdentifiers?: boolean;
}

type Algorithm = { name: string; hash?: string };
type EcdsaParams = { name: string; hash: string };

let serial = BigInt(Date.now()) << 8n;

export async function makeCertificate(spec: CertificateSpec): Promise<x509.X509Certificate> {
  const now = Date.now();
  serial += 1n;
  const subject = spec.subject ?? `CN=${ID}`;
  const signer = spec.issuer?.keys ?? spec.keys;
  const extensions = [...spec.extensions];
  if (!spec.noKeyIdentifiers) {
    if (spec.issuer)
      extensions.push(await x509.AuthorityKeyIdentifierExtension.create(spec.issuer.certificate.publicKey));
    if (spec.extensions.some((item) => item instanceof x509.BasicConstraintsExtension && item.ca)) {
      extensions.push(
        await x509.SubjectKeyIdentifierExtension.create(spec.keys.spki ?? spec.keys.pair.publicKey),
      );
    }
  }
  const signingAlgorithm =
    spec.signingAlgorithm ??
    (signer.pair.privateKey.algorithm.name === "ECDSA" ? ECDSA_SHA256 : signer.pair.privateKey.algorithm);
  return x509.X509CertificateGenerator.create({
    serialNumber: serial.toString(16),
    subject,
    issuer: spec.issuer ? spec.issuer.certificate.subjectName : subject,
    notBefore: new Date(spec.notBeforeMs ?? now - 60_000),
    notAfter: new Date(spec.notAfterMs ?? now + 24 * HOUR),
    publicKey: spec.keys.spki ?? spec.keys.pair.publicKey,
    signingKey: signer.pair.privateKey,
    signingAlgorithm: signingAlgorithm as never,
    extensions,
  });
}

export const caExtensions = (
  pathLength?: number,
  keyUsage = x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign,
) => [
  new x509.BasicConstraintsExtension(true, pathLength, true),
  new x509.KeyUsagesExtension(keyUsage, true),
];

/** The leaf Linkerd's identity controller issues (contract §3.4), with a SAN of choice. */
export const linkerdLeafExtensions = (san: x509.Extension = sanExtension([generalName.dns(ID)])) => [
  new x509.BasicConstraintsExtension(false, undefined, true),
  new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
  new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
  san,
];

export interface Hierarchy {
  readonly root: { certificate: x509.X509Certificate; keys: Keys };
  readonly issuer: { certificate: x509.X509Certificate; keys: Keys };
  readonly anchorsPem: string;
}

/** root (P-256, pathlen 1) → issuer `identity.linkerd.cluster.local` (P-256, pathlen 0), as `linkerd install` makes. */
export async function makeHierarchy(
  options: { rootNotAfterMs?: number; issuerNotAfterMs?: number } = {},
): Promise<Hierarchy> {
  const rootKeys = await ecKeys();
  const root = await makeCertificate({
    subject: "CN=root.linkerd.cluster.local",
    keys: rootKeys,
    extensions: caExtensions(1),
    ...(options.rootNotAfterMs === undefined ? {} : { notAfterMs: options.rootNotAfterMs }),
  });
  const issuerKeys = await ecKeys();
  const issuer = await makeCertificate({
    subject: "CN=identity.linkerd.cluster.local",
    keys: issuerKeys,
    issuer: { certificate: root, keys: rootKeys },
    extensions: caExtensions(0),
    ...(options.issuerNotAfterMs === undefined ? {} : { notAfterMs: options.issuerNotAfterMs }),
  });
  return {
    root: { certificate: root, keys: rootKeys },
    issuer: { certificate: issuer, keys: issuerKeys },
    anchorsPem: root.toString("pem"),
  };
}

export { x509 };
