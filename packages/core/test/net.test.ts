import { isIPv4, isIPv6 } from "node:net";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  cidrContains,
  formatCidr,
  formatIpAddress,
  isLoopbackHost,
  normalizeClientAddress,
  parseCidr,
  parseIpAddress,
} from "../src/index.js";

describe("IP networks", () => {
  it("parses and contains", () => {
    const ten = parseCidr("10.1.2.3/8");
    expect(formatCidr(ten)).toBe("10.0.0.0/8");
    const ip = parseIpAddress("10.200.0.1");
    expect(ip && cidrContains(ten, ip.family, ip.value)).toBe(true);
    const other = parseIpAddress("11.0.0.1");
    expect(other && cidrContains(ten, other.family, other.value)).toBe(false);
    const v6 = parseCidr("fd00::/8");
    const inside = parseIpAddress("fd12:3456::1");
    expect(inside && cidrContains(v6, inside.family, inside.value)).toBe(true);
    expect(inside && cidrContains(ten, inside.family, inside.value)).toBe(false);
    expect(formatCidr(parseCidr("::1"))).toBe("::1/128");
    expect(formatCidr(parseCidr("0.0.0.0/0"))).toBe("0.0.0.0/0");
  });

  it("IPv6 text round-trips through the numeric form", () => {
    fc.assert(
      fc.property(fc.ipV6(), (text) => {
        const parsed = parseIpAddress(text);
        if (!parsed) return false;
        const again = parseIpAddress(formatIpAddress(6, parsed.value));
        return again?.value === parsed.value;
      }),
    );
    fc.assert(
      fc.property(fc.ipV4(), (text) => formatIpAddress(4, parseIpAddress(text)?.value ?? -1n) === text),
    );
  });

  it("accepts exactly the IPv6 text net.isIPv6 accepts, and reads the value the URL parser does", () => {
    // The URL parser knows no zones; its serialization is the RFC 5952 form formatIpAddress writes.
    const urlForm = (text: string) => new URL(`http://[${text.split("%")[0]}]/`).hostname.slice(1, -1);
    const agrees = (text: string) => {
      const parsed = parseIpAddress(text);
      if (isIPv4(text)) return parsed?.family === 4;
      if (!isIPv6(text)) return parsed === undefined;
      return parsed?.family === 6 && formatIpAddress(6, parsed.value) === urlForm(text);
    };
    const cases = [
      "::",
      "::1",
      "1::",
      "1:2:3:4:5:6:7:8",
      "1:2:3:4:5:6:7::",
      "::2:3:4:5:6:7:8",
      "1:2:3:4:5:6:1.2.3.4",
      "::ffff:10.1.2.3",
      "::1.2.3.4",
      "1:2:3:4:5::1.2.3.4",
      "fe80::1%eth0",
      "fe80::1%",
      "fe80::1%a%b",
      "1::2::3",
      ":1::",
      "1::2:",
      ":::",
      "1:2:3:4:5:6:7:8:9",
      "1:2:3:4:5:6:7:8::",
      "::1:2:3:4:5:6:7:8",
      "12345::",
      "g::",
      "1.2.3.4::",
      "::1.2.3",
      "::01.2.3.4",
      "1:2:3:4:5:6:7:1.2.3.4",
      "::ffff:1.2.3.4:5",
      " ::1",
      "FE80::AB%x.y-z:1",
    ];
    for (const text of cases) expect(agrees(text), text).toBe(true);
    fc.assert(fc.property(fc.ipV6(), agrees), { numRuns: 2000 });
    const pieces = fc.constantFrom(
      "::",
      ":",
      "0",
      "1",
      "ff",
      "FfFf",
      "12345",
      "1.2.3.4",
      "255.255.255.255",
      "%e",
      ".",
      "g",
    );
    fc.assert(
      fc.property(
        fc.array(pieces, { maxLength: 12 }).map((parts) => parts.join("")),
        agrees,
      ),
      {
        numRuns: 20_000,
      },
    );
  });

  it("loopback detection and IPv4-mapped addresses", () => {
    expect(isLoopbackHost("127.0.0.1")).toBe(true);
    expect(isLoopbackHost("127.5.0.1")).toBe(true);
    expect(isLoopbackHost("[::1]")).toBe(true);
    expect(isLoopbackHost("localhost.")).toBe(true);
    expect(isLoopbackHost("10.0.0.1")).toBe(false);
    expect(isLoopbackHost("linkerd-dst.linkerd.svc")).toBe(false);
    expect(normalizeClientAddress("::ffff:10.0.0.7")).toBe("10.0.0.7");
    expect(normalizeClientAddress("::1")).toBe("::1");
  });
});
