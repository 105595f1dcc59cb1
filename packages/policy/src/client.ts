import { ipv4Word, type PeerIdentity, parseIpAddress } from "@inmesh/core";
import type { ClientFacts } from "./types.js";
import { indexedList } from "./util.js";

const U32 = 0xffffffffn;
const NO_SUFFIXES: readonly string[] = Object.freeze([]);
const SPIFFE_SCHEME = "spiffe://";

/**
 * Computes the per-connection facts the evaluator needs. Call it once when a connection is accepted (or
 * its TLS handshake completes) and reuse the result for every request on that connection.
 *
 * @param address the socket's `remoteAddress` (`::ffff:10.0.0.1` is treated as `10.0.0.1`)
 * @param peer the verified peer identity of the connection
 */
export function clientFacts(address: string | undefined, peer: PeerIdentity): ClientFacts {
  const text = address?.trim();
  const dotted = text === undefined ? undefined : dottedIpv4(text);
  const ip = text === undefined || dotted !== undefined ? undefined : parseIpAddress(text);
  let family: 4 | 6 | undefined;
  let words: [number, number, number, number] = [0, 0, 0, 0];
  let normalized = "";
  if (dotted !== undefined) {
    family = 4;
    words = [dotted.word, 0, 0, 0];
    normalized = dotted.text;
  } else if (ip?.family === 4) {
    family = 4;
    words = [Number(ip.value & U32), 0, 0, 0];
    normalized = formatV4(words[0]);
  } else if (ip?.family === 6) {
    // An IPv4-mapped address (::ffff:a.b.c.d) is matched as IPv4, as the proxy does when it accepts.
    if (ip.value >> 32n === 0xffffn) {
      family = 4;
      words = [Number(ip.value & U32), 0, 0, 0];
      normalized = formatV4(words[0]);
    } else {
      family = 6;
      words = [
        Number((ip.value >> 96n) & U32),
        Number((ip.value >> 64n) & U32),
        Number((ip.value >> 32n) & U32),
        Number(ip.value & U32),
      ];
      normalized = formatV6(words);
    }
  }

  const tlsEstablished = peer.kind === "mesh" || peer.kind === "tls-anonymous";
  let identity: string | undefined;
  let identityKind: "dns" | "uri" | undefined;
  let identitySuffixes = NO_SUFFIXES;
  if (peer.kind === "mesh" && peer.name !== "") {
    if (peer.name.startsWith(SPIFFE_SCHEME)) {
      identity = peer.name;
      identityKind = "uri";
    } else {
      // The proxy lower-cases DNS-like client identities when it parses them.
      identity = peer.name.toLowerCase();
      identityKind = "dns";
      identitySuffixes = dotSuffixes(identity);
    }
  }

  return Object.freeze({
    address: normalized,
    family,
    peer,
    tlsEstablished,
    identity,
    identityKind,
    // Not frozen: read by index per request (see indexedList).
    ipWords: words,
    identitySuffixes,
  });
}

const IPV4_MAPPED_PREFIX = "::ffff:";

/**
 * The common case, `a.b.c.d` or that address mapped as `::ffff:a.b.c.d` (how a dual-stack socket reports
 * an IPv4 peer), without parseIpAddress's BigInt arithmetic: that was most of clientFacts' cost, ~0.5% of
 * a new mTLS connection's CPU (S6). net's isIPv4 admits no leading zeros, so the dotted text is already
 * the normal form. Anything else is left to parseIpAddress.
 */
function dottedIpv4(text: string): { word: number; text: string } | undefined {
  const dotted =
    text.length > IPV4_MAPPED_PREFIX.length &&
    text.slice(0, IPV4_MAPPED_PREFIX.length).toLowerCase() === IPV4_MAPPED_PREFIX
      ? text.slice(IPV4_MAPPED_PREFIX.length)
      : text;
  const word = ipv4Word(dotted);
  return word === undefined ? undefined : { word, text: dotted };
}

/** Every suffix of `name` that begins with a dot, longest first. */
function dotSuffixes(name: string): readonly string[] {
  const suffixes: string[] = [];
  for (let i = name.indexOf("."); i >= 0; i = name.indexOf(".", i + 1)) suffixes.push(name.slice(i));
  return indexedList(suffixes);
}

function formatV4(word: number): string {
  return `${word >>> 24}.${(word >>> 16) & 0xff}.${(word >>> 8) & 0xff}.${word & 0xff}`;
}

function formatV6(words: readonly [number, number, number, number]): string {
  const hextets: number[] = [];
  for (const word of words) hextets.push(word >>> 16, word & 0xffff);
  // RFC 5952: compress the longest run (≥ 2) of zero hextets.
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8; ) {
    if (hextets[i] !== 0) {
      i += 1;
      continue;
    }
    let j = i;
    while (j < 8 && hextets[j] === 0) j += 1;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = hextets.map((h) => h.toString(16));
  if (bestStart < 0) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLength).join(":")}`;
}
