import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  webcrypto,
  X509Certificate,
} from "node:crypto";
import { mkdir, readFile, rename, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { ConfigError, isDnsName, MeshError, MeshErrorCode } from "@inmesh/core";
import * as x509 from "@peculiar/x509";

/**
 * The dev control plane's certificate authority: a P-256 root (the trust anchor) and a P-256 issuer
 * `identity.<cpns>.<td>` that signs workload leaves exactly as linkerd2's identity controller does
 * (contract §3.3 checkCSR, §3.4 issued certificate).
 */

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

const DAY_MS = 86_400_000;
const DEFAULT_ISSUANCE_LIFETIME_MS = DAY_MS;
/** linkerd2 chart default (`clockSkewAllowance: 20s`). */
const DEFAULT_CLOCK_SKEW_ALLOWANCE_MS = 20_000;
const DEFAULT_ISSUER_LIFETIME_MS = 365 * DAY_MS;
const DEFAULT_ROOT_LIFETIME_MS = 10 * 365 * DAY_MS;
/** A Linkerd CSR is ~250 bytes; anything near this is hostile. */
const MAX_CSR_BYTES = 16 * 1024;
/** SPIFFE ID standard: lower-case trust domain, non-empty path of `[A-Za-z0-9._-]` segments. */
const SPIFFE_WORKLOAD_ID = /^spiffe:\/\/[a-z0-9._-]+(\/[A-Za-z0-9._-]+)+$/;

const EC_P256 = { name: "ECDSA", namedCurve: "P-256" } as const;
const ECDSA_SHA256 = { name: "ECDSA", hash: "SHA-256" } as const;
const OID_SUBJECT_ALT_NAME = "2.5.29.17";

export type CsrRejectionReason =
  | "malformed"
  | "too-large"
  | "invalid-identity"
  | "bad-signature"
  | "key-not-p256"
  | "dns-san-count"
  | "dns-san-mismatch"
  | "forbidden-san"
  | "common-name-mismatch";

/** A CSR that linkerd2's identity controller would refuse (`FailedPrecondition`, or `InvalidArgument` when malformed). */
export class CsrRejectedError extends MeshError {
  readonly reason: CsrRejectionReason;
  constructor(reason: CsrRejectionReason, message: string, options?: { cause?: unknown }) {
    super(MeshErrorCode.IDENTITY_CSR_REJECTED, `CSR rejected (${reason}): ${message}`, {
      ...(options?.cause === undefined ? {} : { cause: options.cause }),
      details: { reason },
    });
    this.name = "CsrRejectedError";
    this.reason = reason;
  }
}

export interface IssueOptions {
  /** Leaf lifetime, before the skew allowance is added. @default the CA's issuanceLifetimeMs (24 h) */
  lifetimeMs?: number;
  /** Wall-clock "now" for the validity window (tests). @default Date.now() */
  nowMs?: number;
}

export interface IssuedCertificate {
  readonly leafDer: Buffer;
  /** Issuer certificate (+ further chain), DER, leaf→root order: CertifyResponse.intermediate_certificates. */
  readonly chainDer: Buffer[];
  /** The leaf's notAfter: CertifyResponse.valid_until. */
  readonly validUntilMs: number;
  /** Hex serial number. */
  readonly serial: string;
}

/** A leaf plus the private key generated for it (for the control plane's own servers and for tests). */
export interface IssuedCredentials extends IssuedCertificate {
  /** PKCS#8 PEM. */
  readonly privateKeyPem: string;
  readonly leafPem: string;
  /** Leaf followed by the issuer chain, PEM: what a TLS server or client presents. */
  readonly certificateChainPem: string;
}

export type CertificateAuthorityChange =
  | { readonly kind: "trust-anchors"; readonly trustAnchorsPem: string }
  | { readonly kind: "issuer"; readonly issuerCertPem: string };

export interface CertificateAuthority {
  /** Root(s) PEM bundle; during an anchor rotation it holds old and new roots. */
  readonly trustAnchorsPem: string;
  /** Issuer certificate (+ further chain) DER, leaf→root order, sent as intermediate_certificates. */
  readonly issuerChainDer: readonly Buffer[];
  /** Issuer certificate PEM (first of the chain). */
  readonly issuerCertPem: string;
  readonly trustDomain: string;
  readonly controlPlaneNamespace: string;
  /** `identity.<cpns>.<td>` */
  readonly issuerName: string;
  /** Latest notAfter any leaf can get (earliest expiry in the issuer chain and its root). */
  readonly issuerNotAfterMs: number;
  readonly issuanceLifetimeMs: number;
  readonly clockSkewAllowanceMs: number;
  /**
   * Applies linkerd's checkCSR rules (exactly one DNS SAN == identity, CN empty or == identity, no
   * email/IP/URI SANs, ECDSA P-256 key, valid self-signature); throws CsrRejectedError otherwise.
   */
  issue(csrDer: Uint8Array, identity: string, options?: IssueOptions): Promise<IssuedCertificate>;
  /**
   * Generates a P-256 key and a Linkerd-style CSR for `identity`, then issues it through `issue()`. A
   * `spiffe://<trust domain>/<path>` identity gets a leaf whose only SAN is that URI, as an
   * ExternalWorkload's SPIFFE issuer would give it (for dev and tests).
   */
  issueCredentials(identity: string, options?: IssueOptions): Promise<IssuedCredentials>;
  /** Anchor rotation step 1: adds a new root to the bundle ([old, new]); the issuer is unchanged. */
  beginTrustAnchorRotation(): Promise<void>;
  /** Replaces the issuer with a fresh key and certificate signed by the newest root (step 2 of anchor rotation). */
  rotateIssuer(options?: { lifetimeMs?: number }): Promise<void>;
  /** Anchor rotation step 3: keeps only the newest root in the bundle. */
  completeTrustAnchorRotation(): Promise<void>;
  /** Called after every change of anchors or issuer; returns an unsubscribe function. */
  onChange(listener: (change: CertificateAuthorityChange) => void): () => void;
}

export interface CertificateAuthorityOptions {
  /** @default "cluster.local" */
  trustDomain?: string;
  /** @default "linkerd" */
  controlPlaneNamespace?: string;
  /** Default leaf lifetime. @default 24 h */
  issuanceLifetimeMs?: number;
  /** Subtracted from notBefore and added to notAfter. @default 20 s (linkerd chart) */
  clockSkewAllowanceMs?: number;
  /** @default 365 days */
  issuerLifetimeMs?: number;
  /** @default 10 years */
  rootLifetimeMs?: number;
}

export interface CertificateAuthorityPemOptions extends CertificateAuthorityOptions {
  /** Trust anchor(s), PEM bundle. */
  rootPem: string;
  /** Issuer certificate, optionally followed by further chain certificates up to (not including) the root. */
  issuerCertPem: string;
  /** Issuer private key (PKCS#8 or SEC1 PEM), ECDSA P-256. */
  issuerKeyPem: string;
  /** Private key of one of the roots; needed only for rotateIssuer/beginTrustAnchorRotation. */
  rootKeyPem?: string;
}

interface Signer {
  readonly cert: x509.X509Certificate;
  readonly der: Buffer;
  readonly pem: string;
  readonly notAfterMs: number;
  /** undefined when only the certificate is known (a root without its key). */
  readonly privateKey: CryptoKey | undefined;
  readonly privateKeyPem: string | undefined;
}

interface ResolvedOptions {
  trustDomain: string;
  controlPlaneNamespace: string;
  issuanceLifetimeMs: number;
  clockSkewAllowanceMs: number;
  issuerLifetimeMs: number;
  rootLifetimeMs: number;
}

let providerInstalled = false;
function ensureCryptoProvider(): void {
  if (providerInstalled) return;
  x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);
  providerInstalled = true;
}

function resolveOptions(options: CertificateAuthorityOptions = {}): ResolvedOptions {
  const trustDomain = options.trustDomain ?? "cluster.local";
  const controlPlaneNamespace = options.controlPlaneNamespace ?? "linkerd";
  if (!isDnsName(trustDomain)) {
    throw new ConfigError(`trustDomain ${JSON.stringify(trustDomain)} is not a DNS name`, {
      details: { variable: "trustDomain" },
    });
  }
  if (!isDnsName(controlPlaneNamespace) || controlPlaneNamespace.includes(".")) {
    throw new ConfigError(
      `controlPlaneNamespace ${JSON.stringify(controlPlaneNamespace)} is not a DNS label`,
      {
        details: { variable: "controlPlaneNamespace" },
      },
    );
  }
  const duration = (
    name: keyof CertificateAuthorityOptions,
    value: number | undefined,
    fallback: number,
    min: number,
  ) => {
    const ms = value ?? fallback;
    if (!Number.isSafeInteger(ms) || ms < min) {
      throw new ConfigError(`${name} must be an integer number of milliseconds >= ${min}, got ${ms}`, {
        details: { variable: name },
      });
    }
    return ms;
  };
  return {
    trustDomain,
    controlPlaneNamespace,
    issuanceLifetimeMs: duration(
      "issuanceLifetimeMs",
      options.issuanceLifetimeMs,
      DEFAULT_ISSUANCE_LIFETIME_MS,
      1000,
    ),
    clockSkewAllowanceMs: duration(
      "clockSkewAllowanceMs",
      options.clockSkewAllowanceMs,
      DEFAULT_CLOCK_SKEW_ALLOWANCE_MS,
      0,
    ),
    issuerLifetimeMs: duration(
      "issuerLifetimeMs",
      options.issuerLifetimeMs,
      DEFAULT_ISSUER_LIFETIME_MS,
      1000,
    ),
    rootLifetimeMs: duration("rootLifetimeMs", options.rootLifetimeMs, DEFAULT_ROOT_LIFETIME_MS, 1000),
  };
}

function toPem(der: Uint8Array, label: string): string {
  const base64 = Buffer.from(der).toString("base64");
  return `-----BEGIN ${label}-----\n${base64.replace(/.{1,64}/g, "$&\n")}-----END ${label}-----\n`;
}

/** Every CERTIFICATE block of a PEM bundle, DER-decoded; anything else in the text is ignored. */
function certificateDersFromPem(pem: string): Buffer[] {
  const ders: Buffer[] = [];
  for (const match of pem.matchAll(/-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/g)) {
    ders.push(Buffer.from((match[1] ?? "").replace(/\s+/g, ""), "base64"));
  }
  return ders;
}

async function exportPrivateKeyPem(key: CryptoKey): Promise<string> {
  return toPem(new Uint8Array(await webcrypto.subtle.exportKey("pkcs8", key)), "PRIVATE KEY");
}

async function generateCaKeys(): Promise<CryptoKeyPair> {
  // Extractable so that loadOrCreateCertificateAuthority can persist them.
  return (await webcrypto.subtle.generateKey(EC_P256, true, ["sign", "verify"])) as CryptoKeyPair;
}

/** Imports a PEM private key for signing; it must be ECDSA P-256. */
async function importSigningKey(pem: string, variable: string): Promise<CryptoKey> {
  let keyObject: ReturnType<typeof createPrivateKey>;
  try {
    keyObject = createPrivateKey(pem);
  } catch (error) {
    throw new ConfigError(`${variable} is not a valid private key: ${(error as Error).message}`, {
      cause: error,
      details: { variable },
    });
  }
  if (keyObject.asymmetricKeyType !== "ec" || keyObject.asymmetricKeyDetails?.namedCurve !== "prime256v1") {
    throw new ConfigError(`${variable} must be an ECDSA P-256 key`, { details: { variable } });
  }
  const der = keyObject.export({ format: "der", type: "pkcs8" });
  return (await webcrypto.subtle.importKey("pkcs8", der, EC_P256, true, ["sign"])) as CryptoKey;
}

function signerFrom(
  cert: x509.X509Certificate,
  privateKey: CryptoKey | undefined,
  privateKeyPem: string | undefined,
): Signer {
  const der = Buffer.from(cert.rawData);
  return {
    cert,
    der,
    pem: toPem(der, "CERTIFICATE"),
    notAfterMs: cert.notAfter.getTime(),
    privateKey,
    privateKeyPem,
  };
}

function floorToSecond(ms: number): number {
  return Math.floor(ms / 1000) * 1000;
}

async function createRoot(resolved: ResolvedOptions, serialHex: string): Promise<Signer> {
  const keys = await generateCaKeys();
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serialHex,
    name: `CN=root.${resolved.controlPlaneNamespace}.${resolved.trustDomain}`,
    notBefore: new Date(floorToSecond(now - resolved.clockSkewAllowanceMs)),
    notAfter: new Date(floorToSecond(now + resolved.rootLifetimeMs)),
    keys,
    signingAlgorithm: ECDSA_SHA256,
    extensions: [
      new x509.BasicConstraintsExtension(true, 1, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return signerFrom(cert, keys.privateKey, await exportPrivateKeyPem(keys.privateKey));
}

async function createIssuer(
  resolved: ResolvedOptions,
  root: Signer,
  serialHex: string,
  lifetimeMs: number,
): Promise<Signer> {
  if (root.privateKey === undefined) {
    throw new MeshError(
      MeshErrorCode.INVALID_ARG,
      "the root private key is not available; cannot sign an issuer",
    );
  }
  const keys = await generateCaKeys();
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serialHex,
    subject: `CN=identity.${resolved.controlPlaneNamespace}.${resolved.trustDomain}`,
    issuer: root.cert.subjectName,
    notBefore: new Date(floorToSecond(now - resolved.clockSkewAllowanceMs)),
    notAfter: new Date(floorToSecond(Math.min(now + lifetimeMs, root.notAfterMs))),
    publicKey: keys.publicKey,
    signingKey: root.privateKey,
    signingAlgorithm: ECDSA_SHA256,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(root.cert.publicKey),
    ],
  });
  return signerFrom(cert, keys.privateKey, await exportPrivateKeyPem(keys.privateKey));
}

/** Node/OpenSSL check that `child` was signed by `parent` (names, AKI/SKI and signature). */
function isSignedBy(child: X509Certificate, parent: X509Certificate): boolean {
  try {
    return child.checkIssued(parent) && child.verify(parent.publicKey);
  } catch {
    return false;
  }
}

/** linkerd2 `checkCSR` (pkg/identity/service.go) plus a proof-of-possession check. */
async function checkCsr(
  csrDer: Uint8Array,
  identity: string,
): Promise<{ csr: x509.Pkcs10CertificateRequest; spki: Buffer }> {
  if (!isDnsName(identity)) {
    throw new CsrRejectedError(
      "invalid-identity",
      `requested identity ${JSON.stringify(identity)} is not a DNS name`,
    );
  }
  if (csrDer.byteLength > MAX_CSR_BYTES) {
    throw new CsrRejectedError("too-large", `CSR of ${csrDer.byteLength} bytes exceeds ${MAX_CSR_BYTES}`);
  }
  let csr: x509.Pkcs10CertificateRequest;
  let spki: Buffer;
  let sanExtensions: x509.Extension[];
  let commonNames: string[];
  try {
    csr = new x509.Pkcs10CertificateRequest(Buffer.from(csrDer));
    spki = Buffer.from(csr.publicKey.rawData);
    sanExtensions = csr.extensions.filter((extension) => extension.type === OID_SUBJECT_ALT_NAME);
    commonNames = csr.subjectName.getField("CN");
  } catch (error) {
    throw new CsrRejectedError("malformed", `not a DER PKCS#10 request: ${(error as Error).message}`, {
      cause: error,
    });
  }
  // The key type is read by OpenSSL, not by the ASN.1 library.
  let keyOk = false;
  try {
    const key = createPublicKey({ key: spki, format: "der", type: "spki" });
    keyOk = key.asymmetricKeyType === "ec" && key.asymmetricKeyDetails?.namedCurve === "prime256v1";
  } catch {
    keyOk = false;
  }
  if (!keyOk) throw new CsrRejectedError("key-not-p256", "CSR must contain an ECDSA P-256 public key");
  let signatureOk = false;
  try {
    signatureOk = await csr.verify();
  } catch {
    signatureOk = false;
  }
  if (!signatureOk)
    throw new CsrRejectedError("bad-signature", "CSR signature does not verify with its own key");

  const dnsNames: string[] = [];
  if (sanExtensions.length > 1) throw new CsrRejectedError("malformed", "duplicate subjectAltName extension");
  const sanExtension = sanExtensions[0];
  if (sanExtension !== undefined) {
    let names: { type: string; value: string }[];
    try {
      names = new x509.SubjectAlternativeNameExtension(sanExtension.rawData).names.items.map((item) => ({
        type: item.type,
        value: item.value,
      }));
    } catch (error) {
      throw new CsrRejectedError("forbidden-san", "subjectAltName holds a name type other than DNS", {
        cause: error,
      });
    }
    for (const name of names) {
      if (name.type !== "dns") {
        throw new CsrRejectedError("forbidden-san", `subjectAltName of type ${name.type} is not allowed`);
      }
      dnsNames.push(name.value);
    }
  }
  if (dnsNames.length !== 1) {
    throw new CsrRejectedError("dns-san-count", `CSR must have exactly one DNS SAN, has ${dnsNames.length}`);
  }
  if (dnsNames[0] !== identity) {
    throw new CsrRejectedError(
      "dns-san-mismatch",
      `DNS SAN ${JSON.stringify(dnsNames[0])} is not ${identity}`,
    );
  }
  if (
    commonNames.length > 1 ||
    (commonNames.length === 1 && commonNames[0] !== "" && commonNames[0] !== identity)
  ) {
    throw new CsrRejectedError(
      "common-name-mismatch",
      `CN ${JSON.stringify(commonNames.join(","))} is not ${identity}`,
    );
  }
  return { csr, spki };
}

interface CaState {
  roots: Signer[];
  /** Signs rotateIssuer; always the newest root whose key is known. */
  signingRoot: Signer | undefined;
  issuer: Signer;
  /** Certificates between the issuer and the root (from an external issuer secret). */
  furtherChain: Buffer[];
}

function createAuthority(
  resolved: ResolvedOptions,
  state: CaState,
  persist: ((state: CaState) => Promise<void>) | undefined,
): CertificateAuthority {
  const listeners = new Set<(change: CertificateAuthorityChange) => void>();
  // Serials grow with time so that they keep increasing across restarts of a persisted CA.
  let lastSerial = 0n;
  const nextSerialHex = (): string => {
    let serial = BigInt(Date.now()) << 16n;
    if (serial <= lastSerial) serial = lastSerial + 1n;
    lastSerial = serial;
    return serial.toString(16).padStart(16, "0");
  };

  const trustAnchorsPem = () => state.roots.map((root) => root.pem).join("");
  const issuerChainDer = () => [state.issuer.der, ...state.furtherChain];
  // Earliest expiry among the issuer chain and the root it chains to; recomputed after each rotation.
  let cachedChainNotAfterMs: number | undefined;
  const chainNotAfterMs = (): number => {
    if (cachedChainNotAfterMs !== undefined) return cachedChainNotAfterMs;
    const chain = issuerChainDer().map((der) => new x509.X509Certificate(der));
    let notAfter = Math.min(...chain.map((cert) => cert.notAfter.getTime()));
    const top = new X509Certificate(issuerChainDer()[chain.length - 1] as Buffer);
    for (const root of state.roots) {
      if (isSignedBy(top, new X509Certificate(root.der))) notAfter = Math.min(notAfter, root.notAfterMs);
    }
    cachedChainNotAfterMs = notAfter;
    return notAfter;
  };

  const emit = (change: CertificateAuthorityChange) => {
    for (const listener of listeners) {
      try {
        listener(change);
      } catch {
        // A listener's failure must not undo a rotation that already happened.
      }
    }
  };

  const issue = async (
    csrDer: Uint8Array,
    identity: string,
    options: IssueOptions = {},
  ): Promise<IssuedCertificate> => {
    const lifetimeMs = options.lifetimeMs ?? resolved.issuanceLifetimeMs;
    if (!Number.isFinite(lifetimeMs) || lifetimeMs <= 0) {
      throw new MeshError(MeshErrorCode.INVALID_ARG, `lifetimeMs must be positive, got ${lifetimeMs}`);
    }
    const { csr, spki } = await checkCsr(csrDer, identity);
    return signLeaf(spki, csr.subjectName, { type: "dns", value: identity }, options);
  };

  /** Signs a leaf for `spki` with the current issuer: Linkerd's leaf profile, one SAN. */
  const signLeaf = async (
    spki: ArrayBuffer | ArrayBufferView,
    subjectName: x509.Name,
    san: { type: "dns" | "url"; value: string },
    options: IssueOptions,
  ): Promise<IssuedCertificate> => {
    const lifetimeMs = options.lifetimeMs ?? resolved.issuanceLifetimeMs;
    if (!Number.isFinite(lifetimeMs) || lifetimeMs <= 0) {
      throw new MeshError(MeshErrorCode.INVALID_ARG, `lifetimeMs must be positive, got ${lifetimeMs}`);
    }
    const nowMs = options.nowMs ?? Date.now();
    const issuer = state.issuer;
    if (issuer.privateKey === undefined) throw new MeshError(MeshErrorCode.INTERNAL, "issuer key missing");
    const notBeforeMs = floorToSecond(nowMs - resolved.clockSkewAllowanceMs);
    const notAfterMs = floorToSecond(
      Math.min(nowMs + lifetimeMs + resolved.clockSkewAllowanceMs, chainNotAfterMs()),
    );
    if (notAfterMs <= nowMs) {
      throw new MeshError(MeshErrorCode.CP_UNAVAILABLE, "the issuer certificate has expired; cannot issue");
    }
    const subjectEmpty = subjectName.toJSON().length === 0;
    const serial = nextSerialHex();
    const leaf = await x509.X509CertificateGenerator.create({
      serialNumber: serial,
      subject: subjectName,
      issuer: issuer.cert.subjectName,
      notBefore: new Date(notBeforeMs),
      notAfter: new Date(notAfterMs),
      publicKey: spki,
      signingKey: issuer.privateKey,
      signingAlgorithm: ECDSA_SHA256,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(
          x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment,
          true,
        ),
        new x509.ExtendedKeyUsageExtension(
          [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth],
          false,
        ),
        // RFC 5280 §4.2.1.6: the SAN is critical when the subject is empty (as Go does).
        new x509.SubjectAlternativeNameExtension([san], subjectEmpty),
        await x509.AuthorityKeyIdentifierExtension.create(issuer.cert.publicKey),
      ],
    });
    return {
      leafDer: Buffer.from(leaf.rawData),
      chainDer: issuerChainDer(),
      validUntilMs: notAfterMs,
      serial,
    };
  };

  const notify = async (change: CertificateAuthorityChange) => {
    cachedChainNotAfterMs = undefined;
    if (persist) await persist(state);
    emit(change);
  };

  return {
    get trustAnchorsPem() {
      return trustAnchorsPem();
    },
    get issuerChainDer() {
      return issuerChainDer();
    },
    get issuerCertPem() {
      return state.issuer.pem;
    },
    trustDomain: resolved.trustDomain,
    controlPlaneNamespace: resolved.controlPlaneNamespace,
    issuerName: `identity.${resolved.controlPlaneNamespace}.${resolved.trustDomain}`,
    get issuerNotAfterMs() {
      return chainNotAfterMs();
    },
    issuanceLifetimeMs: resolved.issuanceLifetimeMs,
    clockSkewAllowanceMs: resolved.clockSkewAllowanceMs,
    issue,
    async issueCredentials(identity, options) {
      ensureCryptoProvider();
      const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
      const privateKeyDer = privateKey.export({ format: "der", type: "pkcs8" });
      const credentialsOf = (issued: IssuedCertificate): IssuedCredentials => {
        const leafPem = toPem(issued.leafDer, "CERTIFICATE");
        return {
          ...issued,
          privateKeyPem: toPem(privateKeyDer, "PRIVATE KEY"),
          leafPem,
          certificateChainPem: leafPem + issued.chainDer.map((der) => toPem(der, "CERTIFICATE")).join(""),
        };
      };
      if (identity.startsWith("spiffe://")) {
        // An ExternalWorkload's identity (Linkerd 2.15+): a SPIFFE ID issued outside Linkerd's identity
        // service (SPIRE, say) under the same trust anchors. The identity service never issues URIs.
        if (!SPIFFE_WORKLOAD_ID.test(identity) || identity.length > 2048) {
          throw new MeshError(
            MeshErrorCode.INVALID_ARG,
            `${JSON.stringify(identity)} is not a SPIFFE workload ID`,
          );
        }
        const spki = publicKey.export({ format: "der", type: "spki" });
        return credentialsOf(
          await signLeaf(spki, new x509.Name(""), { type: "url", value: identity }, options ?? {}),
        );
      }
      const keys = {
        privateKey: (await webcrypto.subtle.importKey("pkcs8", privateKeyDer, EC_P256, false, [
          "sign",
        ])) as CryptoKey,
        publicKey: (await webcrypto.subtle.importKey(
          "spki",
          publicKey.export({ format: "der", type: "spki" }),
          EC_P256,
          true,
          ["verify"],
        )) as CryptoKey,
      };
      const csr = await x509.Pkcs10CertificateRequestGenerator.create({
        name: `CN=${identity}`,
        keys,
        signingAlgorithm: ECDSA_SHA256,
        extensions: [new x509.SubjectAlternativeNameExtension([{ type: "dns", value: identity }])],
      });
      return credentialsOf(await issue(new Uint8Array(csr.rawData), identity, options));
    },
    async beginTrustAnchorRotation() {
      const root = await createRoot(resolved, nextSerialHex());
      state.roots = [...state.roots, root];
      state.signingRoot = root;
      await notify({ kind: "trust-anchors", trustAnchorsPem: trustAnchorsPem() });
    },
    async rotateIssuer(options = {}) {
      const signingRoot = state.signingRoot;
      if (signingRoot === undefined) {
        throw new MeshError(
          MeshErrorCode.INVALID_ARG,
          "rotateIssuer needs the root private key (rootKeyPem)",
        );
      }
      state.issuer = await createIssuer(
        resolved,
        signingRoot,
        nextSerialHex(),
        options.lifetimeMs ?? resolved.issuerLifetimeMs,
      );
      state.furtherChain = [];
      await notify({ kind: "issuer", issuerCertPem: state.issuer.pem });
    },
    async completeTrustAnchorRotation() {
      const newest = state.signingRoot ?? state.roots[state.roots.length - 1];
      if (newest === undefined || state.roots.length <= 1) return;
      const chain = issuerChainDer();
      const top = new X509Certificate(chain[chain.length - 1] as Buffer);
      if (!isSignedBy(top, new X509Certificate(newest.der))) {
        throw new MeshError(
          MeshErrorCode.INVALID_ARG,
          "rotate the issuer to the new root before removing the old roots",
        );
      }
      state.roots = [newest];
      await notify({ kind: "trust-anchors", trustAnchorsPem: trustAnchorsPem() });
    },
    onChange(listener) {
      listeners.add(listener);
      return () => {
        listeners.delete(listener);
      };
    },
  };
}

/** A fresh in-memory CA: new root and issuer keys, nothing written anywhere. */
export async function createCertificateAuthority(
  options: CertificateAuthorityOptions = {},
): Promise<CertificateAuthority> {
  ensureCryptoProvider();
  const resolved = resolveOptions(options);
  const state = await freshState(resolved);
  return createAuthority(resolved, state, undefined);
}

async function freshState(resolved: ResolvedOptions): Promise<CaState> {
  const serialBase = BigInt(Date.now()) << 16n;
  const root = await createRoot(resolved, serialBase.toString(16));
  const issuer = await createIssuer(
    resolved,
    root,
    (serialBase + 1n).toString(16),
    resolved.issuerLifetimeMs,
  );
  return { roots: [root], signingRoot: root, issuer, furtherChain: [] };
}

function parseCertificates(pem: string, variable: string): { der: Buffer; node: X509Certificate }[] {
  const ders = certificateDersFromPem(pem);
  if (ders.length === 0)
    throw new ConfigError(`${variable} holds no PEM certificate`, { details: { variable } });
  return ders.map((der) => {
    try {
      return { der, node: new X509Certificate(der) };
    } catch (error) {
      throw new ConfigError(`${variable} holds an unparsable certificate: ${(error as Error).message}`, {
        cause: error,
        details: { variable },
      });
    }
  });
}

async function stateFromPem(options: CertificateAuthorityPemOptions): Promise<CaState> {
  const roots = parseCertificates(options.rootPem, "rootPem");
  for (const root of roots) {
    if (!root.node.ca)
      throw new ConfigError("rootPem holds a certificate that is not a CA", {
        details: { variable: "rootPem" },
      });
  }
  const issuerChain = parseCertificates(options.issuerCertPem, "issuerCertPem");
  const issuerCert = issuerChain[0] as { der: Buffer; node: X509Certificate };
  if (!issuerCert.node.ca) {
    throw new ConfigError("issuerCertPem is not a CA certificate", {
      details: { variable: "issuerCertPem" },
    });
  }
  const issuerKey = await importSigningKey(options.issuerKeyPem, "issuerKeyPem");
  const issuerSpki = createPublicKey(createPrivateKey(options.issuerKeyPem)).export({
    format: "der",
    type: "spki",
  });
  if (!issuerSpki.equals(issuerCert.node.publicKey.export({ format: "der", type: "spki" }))) {
    throw new ConfigError("issuerKeyPem does not match issuerCertPem", {
      details: { variable: "issuerKeyPem" },
    });
  }
  // The chain issuer → … must end at one of the roots, each link checked by OpenSSL.
  for (let index = 0; index + 1 < issuerChain.length; index += 1) {
    const child = issuerChain[index] as { node: X509Certificate };
    const parent = issuerChain[index + 1] as { node: X509Certificate };
    if (!isSignedBy(child.node, parent.node)) {
      throw new ConfigError("issuerCertPem is not an ordered chain", {
        details: { variable: "issuerCertPem" },
      });
    }
  }
  const top = issuerChain[issuerChain.length - 1] as { node: X509Certificate };
  if (!roots.some((root) => isSignedBy(top.node, root.node))) {
    throw new ConfigError("issuerCertPem does not chain to rootPem", {
      details: { variable: "issuerCertPem" },
    });
  }
  const rootSigners: Signer[] = roots.map((root) =>
    signerFrom(new x509.X509Certificate(root.der), undefined, undefined),
  );
  let signingRoot: Signer | undefined;
  if (options.rootKeyPem !== undefined) {
    const rootKey = await importSigningKey(options.rootKeyPem, "rootKeyPem");
    const rootSpki = createPublicKey(createPrivateKey(options.rootKeyPem)).export({
      format: "der",
      type: "spki",
    });
    const index = roots.findIndex((root) =>
      root.node.publicKey.export({ format: "der", type: "spki" }).equals(rootSpki),
    );
    if (index < 0)
      throw new ConfigError("rootKeyPem matches no root in rootPem", { details: { variable: "rootKeyPem" } });
    const root = rootSigners[index] as Signer;
    signingRoot = signerFrom(root.cert, rootKey, options.rootKeyPem);
    rootSigners[index] = signingRoot;
  }
  return {
    roots: rootSigners,
    signingRoot,
    issuer: signerFrom(new x509.X509Certificate(issuerCert.der), issuerKey, options.issuerKeyPem),
    furtherChain: issuerChain.slice(1).map((entry) => entry.der),
  };
}

/** A CA from existing PEM material, e.g. the trust root and issuer secret of a Linkerd install. */
export async function certificateAuthorityFromPem(
  options: CertificateAuthorityPemOptions,
): Promise<CertificateAuthority> {
  ensureCryptoProvider();
  const resolved = resolveOptions(options);
  return createAuthority(resolved, await stateFromPem(options), undefined);
}

const STATE_FILES = {
  trustAnchors: "trust-anchors.pem",
  rootCert: "root.crt.pem",
  rootKey: "root.key.pem",
  issuerCert: "issuer.crt.pem",
  issuerKey: "issuer.key.pem",
} as const;

async function writePrivateFile(path: string, content: string): Promise<void> {
  // Written under a temporary name and renamed, so a crash never leaves a half-written key.
  const temporary = `${path}.${process.pid}.tmp`;
  await writeFile(temporary, content, { mode: 0o600 });
  await rename(temporary, path);
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

async function saveState(stateDir: string, state: CaState): Promise<void> {
  const signingRoot = state.signingRoot;
  if (signingRoot?.privateKeyPem === undefined || state.issuer.privateKeyPem === undefined) return;
  await writePrivateFile(
    join(stateDir, STATE_FILES.trustAnchors),
    state.roots.map((root) => root.pem).join(""),
  );
  await writePrivateFile(join(stateDir, STATE_FILES.rootCert), signingRoot.pem);
  await writePrivateFile(join(stateDir, STATE_FILES.rootKey), signingRoot.privateKeyPem);
  await writePrivateFile(
    join(stateDir, STATE_FILES.issuerCert),
    state.issuer.pem + state.furtherChain.map((der) => toPem(der, "CERTIFICATE")).join(""),
  );
  await writePrivateFile(join(stateDir, STATE_FILES.issuerKey), state.issuer.privateKeyPem);
}

/**
 * Loads the CA persisted in `stateDir`, or creates and persists a new one (files mode 0600, directory
 * 0700). An issuer that expires within its issuance lifetime is replaced from the persisted root;
 * an expired root is a ConfigError (delete the directory to start over).
 */
export async function loadOrCreateCertificateAuthority(
  stateDir: string,
  options: CertificateAuthorityOptions = {},
): Promise<CertificateAuthority> {
  ensureCryptoProvider();
  const resolved = resolveOptions(options);
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  const paths = Object.values(STATE_FILES).map((name) => join(stateDir, name));
  const present = await Promise.all(paths.map(exists));
  const persist = (state: CaState) => saveState(stateDir, state);
  if (present.every((found) => !found)) {
    const state = await freshState(resolved);
    await persist(state);
    return createAuthority(resolved, state, persist);
  }
  if (!present.every(Boolean)) {
    throw new ConfigError(`CA state in ${stateDir} is incomplete; delete the directory to create a new CA`, {
      details: { variable: "stateDir" },
    });
  }
  const read = (name: string) => readFile(join(stateDir, name), "utf8");
  const state = await stateFromPem({
    rootPem: await read(STATE_FILES.trustAnchors),
    rootKeyPem: await read(STATE_FILES.rootKey),
    issuerCertPem: await read(STATE_FILES.issuerCert),
    issuerKeyPem: await read(STATE_FILES.issuerKey),
  });
  const now = Date.now();
  const signingRoot = state.signingRoot;
  if (signingRoot === undefined || signingRoot.notAfterMs <= now) {
    throw new ConfigError(`the CA root in ${stateDir} has expired; delete the directory to create a new CA`, {
      details: { variable: "stateDir" },
    });
  }
  const authority = createAuthority(resolved, state, persist);
  if (state.issuer.notAfterMs - now < resolved.issuanceLifetimeMs + resolved.clockSkewAllowanceMs) {
    await authority.rotateIssuer();
  }
  return authority;
}
