export function derToPem(der: Uint8Array, label = "CERTIFICATE"): string {
  const base64 = Buffer.from(der).toString("base64");
  return `-----BEGIN ${label}-----\n${base64.replace(/.{1,64}/g, "$&\n")}-----END ${label}-----\n`;
}

/** Every CERTIFICATE block in a PEM text, DER-decoded, at most `maxCount`. Text between blocks is ignored. */
export function pemToDers(pem: string, maxCount = 64): Buffer[] {
  const ders: Buffer[] = [];
  for (const match of pem.matchAll(
    /-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]*?)-----END CERTIFICATE-----/g,
  )) {
    if (ders.length >= maxCount) throw new RangeError(`more than ${maxCount} certificates`);
    ders.push(Buffer.from((match[1] ?? "").replace(/\s+/g, ""), "base64"));
  }
  return ders;
}
