import { Duplex } from "node:stream";
import tls from "node:tls";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { clientHelloServerName, detectConnection, detectHttp } from "../../src/inbound/detect.js";
import { setClientIdHeader, splitTarget, takeOrigProto } from "../../src/inbound/headers.js";

/** The first record a real Node TLS client writes (a ClientHello), captured from a loopback pipe. */
function captureClientHello(servername: string | undefined): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const captured: Buffer[] = [];
    const transport = new Duplex({
      read() {},
      write(chunk: Buffer, _encoding, callback) {
        captured.push(chunk);
        callback();
        resolve(Buffer.concat(captured));
      },
    });
    const socket = tls.connect({
      socket: transport,
      ...(servername === undefined ? {} : { servername }),
      minVersion: "TLSv1.3",
      rejectUnauthorized: false,
    });
    socket.on("error", reject);
    setTimeout(() => socket.destroy(), 50).unref();
  });
}

describe("protocol detection", () => {
  it("finds the SNI of a real ClientHello, and reports TLS without SNI", async () => {
    const hello = await captureClientHello("web.default.serviceaccount.identity.linkerd.cluster.local");
    expect(detectConnection(hello)).toEqual({
      kind: "tls",
      serverName: "web.default.serviceaccount.identity.linkerd.cluster.local",
    });
    expect(detectConnection(hello.subarray(0, 40))).toEqual({ kind: "more" });
    const anonymous = await captureClientHello(undefined);
    expect(detectConnection(anonymous)).toEqual({ kind: "tls", serverName: undefined });
  });

  it("tells HTTP/2 prior knowledge, HTTP/1 and opaque bytes apart, asking for more only while undecided", () => {
    const preface = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    expect(detectHttp(preface)).toBe("h2");
    expect(detectHttp(preface.subarray(0, 10))).toBeUndefined();
    expect(detectHttp(Buffer.from("GET /x HTTP/1.1\r\nHost: a\r\n\r\n"))).toBe("http1");
    expect(detectHttp(Buffer.from("PRI / HTTP/1.1\r\n"))).toBe("http1");
    expect(detectHttp(Buffer.from("GET /x HT"))).toBeUndefined();
    expect(detectHttp(Buffer.from("GET /x SPDY/3\r\n"))).toBe("opaque");
    expect(detectHttp(Buffer.from([0, 1, 2]))).toBe("opaque");
    expect(detectHttp(Buffer.from("*1\r\n$4\r\nPING\r\n"))).toBe("opaque");
    expect(detectConnection(Buffer.from("x".repeat(2000)))).toEqual({
      kind: "plaintext",
      protocol: "opaque",
    });
  });

  it("never throws and never asks for more than the caps allow, on arbitrary bytes", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 9000 }), (bytes) => {
        const detection = detectConnection(bytes);
        if (detection.kind === "more") expect(bytes.byteLength).toBeLessThan(8 * 1024 + 5);
        clientHelloServerName(bytes);
      }),
      { numRuns: 300 },
    );
    fc.assert(
      fc.property(fc.constantFrom(0x16), fc.uint8Array({ minLength: 4, maxLength: 600 }), (first, rest) => {
        const record = Buffer.concat([
          Buffer.from([first, 3, 3, rest.byteLength >> 8, rest.byteLength & 0xff]),
          rest,
        ]);
        const detection = detectConnection(record);
        expect(detection.kind).toBe("tls");
      }),
      { numRuns: 300 },
    );
  });
});

describe("header handling", () => {
  it("replaces every client-sent l5d-client-id with the verified one, or removes it", () => {
    const headers: Record<string, string | string[] | undefined> = { "l5d-client-id": "a, b", host: "x" };
    const raw = ["Host", "x", "L5D-Client-ID", "a", "l5d-client-id", "b"];
    // A message whose headersDistinct node:http already built from the unedited raw list.
    const message = {
      rawHeaders: raw,
      headersDistinct: { "l5d-client-id": ["a", "b"], host: ["x"] } as Record<string, string[] | undefined>,
    };
    setClientIdHeader(headers, raw, "bar.id", message);
    expect(headers["l5d-client-id"]).toBe("bar.id");
    expect(raw).toEqual(["Host", "x", "l5d-client-id", "bar.id"]);
    expect(message.headersDistinct).toEqual({ host: ["x"], "l5d-client-id": ["bar.id"] });
    const plain: Record<string, string | string[] | undefined> = { "l5d-client-id": "spoof" };
    const plainRaw = ["l5d-CLIENT-id", "spoof"];
    setClientIdHeader(plain, plainRaw, undefined);
    expect(plain).toEqual({});
    expect(plainRaw).toEqual([]);
  });

  it("downgrades l5d-orig-proto as Linkerd does", () => {
    const headers: Record<string, string | string[] | undefined> = {
      "l5d-orig-proto": "HTTP/1.1; absolute-form",
    };
    expect(takeOrigProto(headers, undefined)).toEqual({ version: "HTTP/1.1", absoluteForm: true });
    expect(headers["l5d-orig-proto"]).toBeUndefined();
    expect(takeOrigProto({ "l5d-orig-proto": "HTTP/1.0" }, undefined)).toEqual({
      version: "HTTP/1.0",
      absoluteForm: false,
    });
    expect(takeOrigProto({ "l5d-orig-proto": "h3" }, undefined)).toEqual({
      version: undefined,
      absoluteForm: false,
    });
  });

  it("splits request targets, absolute-form included", () => {
    expect(splitTarget("/a/b?c=d")).toEqual({ path: "/a/b", query: "c=d" });
    expect(splitTarget("http://h:1/p?q")).toEqual({ path: "/p", query: "q" });
    expect(splitTarget("http://h")).toEqual({ path: "/", query: "" });
    expect(splitTarget("*")).toEqual({ path: "/", query: "" });
  });
});
