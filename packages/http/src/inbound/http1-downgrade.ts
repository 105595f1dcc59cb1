/**
 * Serves an HTTP/2 request to an HTTP/1 handler, the way Linkerd downgrades requests for an HTTP/1
 * application, without an HTTP/1 connection in between: the handler gets real `IncomingMessage` and
 * `ServerResponse` objects (Express and most frameworks need them) whose "socket" is a view of the stream,
 * and the response is sent as HTTP/2 headers, DATA and trailers.
 *
 * An earlier version wrote each request as HTTP/1.1 into an in-memory connection a node:http server
 * accepted and parsed the response back: a connection, a ClientRequest, two parsers and two pipes per
 * request, 2.5–3.8× the CPU node:http2 spends on the same request (bench S1d).
 *
 * This leans on node:http internals that are stable across Node 20–24 and pinned by
 * `test/inbound/downgrade-internals.test.ts`: `ServerResponse` sends everything through `_send` (and 1xx
 * responses through `writeContinue`/`writeProcessing`/`writeEarlyHints`/`writeInformation`), stores its
 * serialized head in `_header` (`_storeHeader`) and its trailers in `_trailer`, and ends in `_finish`;
 * `IncomingMessage` reads its socket through `readable`/`resume()` and takes headers with
 * `_addHeaderLines`.
 */
import { IncomingMessage, OutgoingMessage, ServerResponse } from "node:http";
import { constants as h2constants, type ServerHttp2Stream } from "node:http2";
import type { Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import { MeshError, MeshErrorCode } from "@inmesh/core";
import { CONNECTION_SPECIFIC_FIELDS, L5D_ORIG_PROTO, type OrigProto } from "./headers.js";
import { MeshIncomingMessage } from "./message.js";
import { debug } from "./pipeline.js";

/** Address facts an HTTP/1 application reads from `req.socket` (Express `req.ip`, `req.protocol`…). */
export interface DowngradeAddress {
  readonly remoteAddress: string | undefined;
  readonly remotePort: number | undefined;
  readonly remoteFamily: string | undefined;
  readonly localAddress: string | undefined;
  readonly localPort: number | undefined;
  readonly encrypted: boolean;
  /** The connection's TLS socket (for `getPeerCertificate()` and friends), if mesh TLS was terminated. */
  readonly tls: TLSSocket | undefined;
}

export function downgradeAddress(
  socket: Socket | TLSSocket | undefined,
  encrypted: boolean,
): DowngradeAddress {
  return {
    remoteAddress: socket?.remoteAddress,
    remotePort: socket?.remotePort,
    remoteFamily: socket?.remoteFamily,
    localAddress: socket?.localAddress,
    localPort: socket?.localPort,
    encrypted,
    tls: encrypted ? (socket as TLSSocket | undefined) : undefined,
  };
}

/** node:http internals used here (see the module comment). */
interface ResponseInternals {
  _header: string | null;
  _headerSent: boolean;
  _hasBody: boolean;
  _trailer: string;
  _closed: boolean;
  _sent100: boolean;
  chunkedEncoding: boolean;
  finished: boolean;
  _storeHeader(firstLine: string, headers: unknown): void;
  _finish(): void;
}

interface IncomingInternals {
  complete: boolean;
  _consuming: boolean;
  _readableState: { resumeScheduled: boolean };
  _addHeaderLines(headers: string[], n: number): void;
  _dump(): void;
}

type HeaderLineAdder = (this: unknown, field: string, value: string, dest: Record<string, unknown>) => void;
const addHeaderLine = (IncomingMessage.prototype as unknown as { _addHeaderLine: HeaderLineAdder })
  ._addHeaderLine;
/** `this` for `_addHeaderLine`: duplicates joined or dropped as node:http does for a response it parses. */
const HEADER_LINE_OPTIONS = { joinDuplicateHeaders: false };
const serverResponseInternals = ServerResponse.prototype as unknown as ResponseInternals;

/**
 * OutgoingMessage's "a write returned false, emit 'drain' later" flag: node:http clears it from its
 * socket's 'drain'; this module's socket is a view, so it clears it from the stream's.
 */
const kNeedDrain = Object.getOwnPropertySymbols(new OutgoingMessage()).find(
  (symbol) => symbol.description === "kNeedDrain",
);

/**
 * The node:http internals this module needs that this Node version lacks (empty on Node 20–24). A Node
 * that changed them gets a clear error per request rather than HTTP/1 bytes inside HTTP/2 DATA frames.
 */
export function missingDowngradeInternals(): string[] {
  const response = ServerResponse.prototype as unknown as Record<string, unknown>;
  const incoming = IncomingMessage.prototype as unknown as Record<string, unknown>;
  const missing: string[] = [];
  for (const name of ["_storeHeader", "_send", "_writeRaw", "_finish", "writeContinue"]) {
    if (typeof response[name] !== "function") missing.push(`ServerResponse.${name}`);
  }
  for (const name of ["_addHeaderLine", "_addHeaderLines", "_dump", "_read"]) {
    if (typeof incoming[name] !== "function") missing.push(`IncomingMessage.${name}`);
  }
  if (kNeedDrain === undefined) missing.push("OutgoingMessage[kNeedDrain]");
  return missing;
}

const MISSING_INTERNALS = missingDowngradeInternals();

const kView = Symbol("inmesh.downgrade.view");
const kWaitsForTrailers = Symbol("inmesh.downgrade.waitsForTrailers");

type DowngradedStream = ServerHttp2Stream & { [kView]?: StreamSocket | undefined };

/**
 * What `req.socket` and `res.socket` are: the stream seen as an HTTP/1 connection. Events, flow and
 * corking go to the stream; addresses and TLS facts come from the session's connection. One per request,
 * and it dies with the request.
 */
class StreamSocket {
  _httpMessage: DowngradedResponse | null = null;
  request!: MeshIncomingMessage;
  watchesDrain = false;
  watchesTimeout = false;

  constructor(
    readonly stream: DowngradedStream,
    readonly facts: DowngradeAddress,
  ) {}

  get remoteAddress(): string | undefined {
    return this.facts.remoteAddress;
  }
  get remotePort(): number | undefined {
    return this.facts.remotePort;
  }
  get remoteFamily(): string | undefined {
    return this.facts.remoteFamily;
  }
  get localAddress(): string | undefined {
    return this.facts.localAddress;
  }
  get localPort(): number | undefined {
    return this.facts.localPort;
  }
  get encrypted(): true | undefined {
    return this.facts.encrypted ? true : undefined;
  }
  get authorized(): boolean {
    return this.facts.tls?.authorized ?? false;
  }
  getPeerCertificate(detailed?: boolean): ReturnType<TLSSocket["getPeerCertificate"]> | null {
    return this.facts.tls === undefined ? null : this.facts.tls.getPeerCertificate(detailed === true);
  }
  getProtocol(): string | null {
    return this.facts.tls?.getProtocol() ?? null;
  }
  getCipher(): ReturnType<TLSSocket["getCipher"]> | undefined {
    return this.facts.tls?.getCipher();
  }
  address(): { address: string | undefined; family: string | undefined; port: number | undefined } {
    return { address: this.facts.localAddress, family: this.facts.remoteFamily, port: this.facts.localPort };
  }

  get readable(): boolean {
    return this.stream.readable;
  }
  get writable(): boolean {
    return this.stream.writable;
  }
  get destroyed(): boolean {
    return this.stream.destroyed;
  }
  get errored(): Error | null {
    return this.stream.errored;
  }
  get _hadError(): boolean {
    return false;
  }
  get _writableState(): unknown {
    return (this.stream as unknown as { _writableState: unknown })._writableState;
  }
  get _readableState(): unknown {
    return (this.stream as unknown as { _readableState: unknown })._readableState;
  }
  get writableLength(): number {
    return this.stream.writableLength;
  }
  get writableHighWaterMark(): number {
    return this.stream.writableHighWaterMark;
  }
  get writableCorked(): number {
    return this.stream.writableCorked;
  }
  get readableHighWaterMark(): number {
    return this.stream.readableHighWaterMark;
  }
  get bytesRead(): number {
    return this.stream.session?.socket?.bytesRead ?? 0;
  }

  cork(): void {
    this.stream.cork();
  }
  uncork(): void {
    this.stream.uncork();
  }
  // IncomingMessage resumes its socket when the application reads (node:http's readStart).
  resume(): this {
    this.stream.resume();
    return this;
  }
  pause(): this {
    this.stream.pause();
    return this;
  }

  setTimeout(ms: number, callback?: () => void): this {
    if (!this.watchesTimeout) {
      this.watchesTimeout = true;
      this.stream.on("timeout", onStreamTimeout);
    }
    if (callback !== undefined) this.stream.once("timeout", callback);
    this.stream.setTimeout(ms);
    return this;
  }
  setNoDelay(): this {
    return this;
  }
  setKeepAlive(): this {
    return this;
  }
  ref(): this {
    return this;
  }
  unref(): this {
    return this;
  }

  /**
   * The application gave up on the request (`res.destroy()`, `req.destroy()`, `socket.destroy()`): a
   * response not started yet becomes a 502, as a proxy answers for an application that closed its
   * connection; one under way is reset.
   */
  destroy(error?: Error): this {
    const stream = this.stream;
    if (stream.destroyed) return this;
    if (error !== undefined) debug("inbound: downgraded request destroyed: %s", error.message);
    if (!stream.headersSent) {
      try {
        stream.respond({ ":status": 502, "content-length": "0" }, { endStream: true });
      } catch {
        stream.close(h2constants.NGHTTP2_INTERNAL_ERROR);
        return this;
      }
      // The client may still be sending a body nobody will read.
      stream.close(h2constants.NGHTTP2_NO_ERROR);
    } else if (!stream.writableEnded) {
      stream.close(h2constants.NGHTTP2_INTERNAL_ERROR);
    } else {
      stream.close(h2constants.NGHTTP2_NO_ERROR);
    }
    return this;
  }
  /** A graceful close: the stream closes once what was written is sent. */
  end(): this {
    if (!this.stream.destroyed) this.stream.close(h2constants.NGHTTP2_NO_ERROR);
    return this;
  }
  destroySoon(): void {
    this.end();
  }
  /** An HTTP/2 stream has no raw HTTP/1 connection to write to (node:http2's compat layer refuses too). */
  write(): never {
    throw new MeshError(
      MeshErrorCode.INVALID_ARG,
      "this request arrived over HTTP/2: its socket has no raw HTTP/1 connection to write to (use the response)",
    );
  }

  on(event: string, listener: (...args: unknown[]) => void): this {
    this.stream.on(event, listener);
    return this;
  }
  addListener(event: string, listener: (...args: unknown[]) => void): this {
    this.stream.on(event, listener);
    return this;
  }
  once(event: string, listener: (...args: unknown[]) => void): this {
    this.stream.once(event, listener);
    return this;
  }
  prependListener(event: string, listener: (...args: unknown[]) => void): this {
    this.stream.prependListener(event, listener);
    return this;
  }
  prependOnceListener(event: string, listener: (...args: unknown[]) => void): this {
    this.stream.prependOnceListener(event, listener);
    return this;
  }
  off(event: string, listener: (...args: unknown[]) => void): this {
    this.stream.off(event, listener);
    return this;
  }
  removeListener(event: string, listener: (...args: unknown[]) => void): this {
    this.stream.removeListener(event, listener);
    return this;
  }
  listenerCount(event: string): number {
    return this.stream.listenerCount(event);
  }
  listeners(event: string): unknown[] {
    return this.stream.listeners(event);
  }
  emit(event: string, ...args: unknown[]): boolean {
    return this.stream.emit(event, ...args);
  }
}

/**
 * The HTTP/1 response of a downgraded request: node:http's own class, with its output taken before it
 * becomes HTTP/1 bytes. The head node:http serialized is read back into HTTP/2 headers (so every way of
 * setting headers behaves exactly as on HTTP/1), the body goes out as DATA, and trailers as trailers.
 *
 * The overrides are own properties, not methods of a subclass: Express and others swap the response's
 * prototype for their own (which inherits node:http's), and own properties survive that.
 */
class DowngradedResponse extends ServerResponse {
  [kWaitsForTrailers] = false;

  constructor(
    req: IncomingMessage,
    readonly view: StreamSocket,
    readonly origProto: OrigProto | undefined,
  ) {
    super(req);
    const own = this as unknown as ResponseOverrides;
    own._storeHeader = storeHeader;
    own._send = send;
    own._writeRaw = writeRaw;
    own._finish = finish;
    own.writeContinue = writeContinue;
    own.writeProcessing = writeProcessing;
    own.writeEarlyHints = writeEarlyHints;
    own.writeInformation = writeInformation;
  }
}

interface ResponseOverrides {
  _storeHeader: typeof storeHeader;
  _send: typeof send;
  _writeRaw: typeof writeRaw;
  _finish: typeof finish;
  writeContinue: typeof writeContinue;
  writeProcessing: typeof writeProcessing;
  writeEarlyHints: typeof writeEarlyHints;
  writeInformation: typeof writeInformation;
}

/** Keeps node:http's chunked framing out of the body: HTTP/2 frames it, and trailers go as trailers. */
function storeHeader(this: DowngradedResponse, firstLine: string, headers: unknown): void {
  serverResponseInternals._storeHeader.call(this, firstLine, headers);
  const self = this as unknown as ResponseInternals;
  // Only a chunked HTTP/1 response may carry trailers (node:http ignores them otherwise).
  this[kWaitsForTrailers] = self.chunkedEncoding;
  self.chunkedEncoding = false;
}

function send(
  this: DowngradedResponse,
  data: string | Uint8Array,
  encoding: BufferEncoding | null | undefined,
  callback: ((error?: Error | null) => void) | null | undefined,
): boolean {
  const self = this as unknown as ResponseInternals;
  const stream = this.view.stream;
  if (!self._headerSent && self._header !== null) {
    self._headerSent = true;
    if (!respond(this, self, stream)) return false;
  }
  if (data.length === 0) {
    // end()'s last send: 'finish' follows (node:http waits for its socket the same way).
    if (typeof callback === "function") process.nextTick(callback);
    return true;
  }
  if (stream.destroyed || stream.writableEnded) return false;
  const written =
    typeof callback === "function"
      ? stream.write(data, encoding ?? "utf8", callback)
      : stream.write(data, encoding ?? "utf8");
  if (!written && !this.view.watchesDrain) {
    this.view.watchesDrain = true;
    stream.on("drain", onStreamDrain);
  }
  return written;
}

function writeRaw(this: DowngradedResponse): boolean {
  // Every output path is taken by the overrides; reaching this means node:http changed underneath.
  this.destroy(new MeshError(MeshErrorCode.INTERNAL, "unexpected raw HTTP/1 write on an HTTP/2 stream"));
  return false;
}

function finish(this: DowngradedResponse): void {
  serverResponseInternals._finish.call(this);
  const stream = this.view.stream;
  if (!stream.destroyed && !stream.writableEnded) stream.end();
}

function writeContinue(this: DowngradedResponse, callback?: () => void): void {
  writeInformation.call(this, 100, undefined, callback);
  (this as unknown as ResponseInternals)._sent100 = true;
}

function writeProcessing(this: DowngradedResponse, callback?: () => void): void {
  writeInformation.call(this, 102, undefined, callback);
}

function writeEarlyHints(
  this: DowngradedResponse,
  hints: Record<string, string | string[]>,
  callback?: () => void,
): void {
  const link = hints.link;
  if (link === undefined || link === null || (Array.isArray(link) && link.length === 0)) return;
  writeInformation.call(this, 103, hints, callback);
}

/** A 1xx response, sent as HTTP/2 informational headers (node:http writes them as raw HTTP/1 lines). */
function writeInformation(
  this: DowngradedResponse,
  status: number,
  headers: Record<string, string | string[]> | undefined,
  callback?: () => void,
): void {
  const stream = this.view.stream;
  if (!stream.destroyed && !stream.headersSent) {
    const informational: Record<string, string | string[] | number> = { ":status": status };
    if (headers !== undefined) {
      for (const name of Object.keys(headers)) {
        const value = headers[name];
        if (value !== undefined) informational[name.toLowerCase()] = value;
      }
    }
    try {
      stream.additionalHeaders(informational);
    } catch (error) {
      debug("inbound: informational response %d refused: %s", status, (error as Error).message);
    }
  }
  if (callback !== undefined) process.nextTick(callback);
}

/**
 * Sends the response head node:http serialized as HTTP/2 headers. Duplicate fields are merged as node:http
 * merges them when it parses a response (single-value fields keep their first value, `set-cookie` stays a
 * list, others are joined), so what the client gets is what an HTTP/1 hop would have delivered.
 */
function respond(res: DowngradedResponse, self: ResponseInternals, stream: ServerHttp2Stream): boolean {
  if (stream.destroyed) return false;
  const head = self._header as string;
  const fields: Record<string, string | string[] | number> = { ":status": res.statusCode };
  // After the status line, the fields, then an empty line.
  addFieldLines(head, head.indexOf("\r\n") + 2, head.length - 2, fields);
  // Fields the Connection header names are hop-by-hop too ("keep-alive" is what node:http writes).
  const connection = fields.connection;
  if (typeof connection === "string" && connection !== "keep-alive" && connection !== "close") {
    for (const token of connection.split(",")) delete fields[token.trim().toLowerCase()];
  }
  for (const name of CONNECTION_SPECIFIC_FIELDS) delete fields[name];
  if (res.origProto !== undefined) fields[L5D_ORIG_PROTO] = res.origProto;
  const noBody = !self._hasBody;
  const waitForTrailers = !noBody && res[kWaitsForTrailers];
  try {
    stream.respond(fields, { endStream: noBody, waitForTrailers });
  } catch (error) {
    debug("inbound: downgraded response head refused: %s", (error as Error).message);
    res.destroy(error as Error);
    return false;
  }
  if (waitForTrailers) stream.once("wantTrailers", onWantTrailers);
  return true;
}

/**
 * Files the "Name: value\r\n" lines of `text` between `start` and `end` into `dest` (the last line may
 * lack its CRLF), merging duplicates as node:http does for a message it parses.
 */
function addFieldLines(text: string, start: number, end: number, dest: Record<string, unknown>): void {
  let line = start;
  while (line < end) {
    let lineEnd = text.indexOf("\r\n", line);
    if (lineEnd < 0 || lineEnd > end) lineEnd = end;
    const colon = text.indexOf(":", line);
    if (colon > line && colon < lineEnd) {
      addHeaderLine.call(
        HEADER_LINE_OPTIONS,
        text.slice(line, colon),
        trimValue(text, colon + 1, lineEnd),
        dest,
      );
    }
    line = lineEnd + 2;
  }
}

function trimValue(text: string, from: number, to: number): string {
  let start = from;
  let end = to;
  while (start < end && (text.charCodeAt(start) === 0x20 || text.charCodeAt(start) === 0x09)) start += 1;
  while (end > start && (text.charCodeAt(end - 1) === 0x20 || text.charCodeAt(end - 1) === 0x09)) end -= 1;
  return text.slice(start, end);
}

function onWantTrailers(this: DowngradedStream): void {
  const trailer = (this[kView]?._httpMessage as unknown as ResponseInternals | undefined)?._trailer ?? "";
  const trailers: Record<string, string | string[]> = {};
  addFieldLines(trailer, 0, trailer.length, trailers);
  for (const name of CONNECTION_SPECIFIC_FIELDS) delete trailers[name];
  try {
    this.sendTrailers(trailers);
  } catch (error) {
    debug("inbound: downgraded response trailers refused: %s", (error as Error).message);
    this.close(h2constants.NGHTTP2_INTERNAL_ERROR);
  }
}

function onStreamDrain(this: DowngradedStream): void {
  const res = this[kView]?._httpMessage;
  if (res === undefined || res === null || kNeedDrain === undefined) return;
  const flags = res as unknown as Record<symbol, boolean>;
  if (flags[kNeedDrain] === true) {
    flags[kNeedDrain] = false;
    res.emit("drain");
  }
}

/** As node:http's socket timeout: the request and response hear it, and if nobody listens it is closed. */
function onStreamTimeout(this: DowngradedStream): void {
  const view = this[kView];
  if (view === undefined) return;
  const req = view.request as unknown as IncomingInternals & IncomingMessage;
  const res = view._httpMessage;
  const heardByRequest = !req.complete && req.emit("timeout", view);
  const heardByResponse = res?.emit("timeout", view);
  // This listener is one of the stream's; any other is the application's own.
  if (!heardByRequest && !heardByResponse && this.listenerCount("timeout") <= 1) view.destroy();
}

function onRequestData(this: DowngradedStream, chunk: Buffer): void {
  const req = this[kView]?.request;
  if (req !== undefined && !req.push(chunk)) this.pause();
}

function onRequestTrailers(this: DowngradedStream, _trailers: unknown, _flags: number, raw: string[]): void {
  const req = this[kView]?.request as unknown as IncomingInternals | undefined;
  if (req === undefined) return;
  const fields = withoutPseudoHeaders(raw);
  // IncomingMessage files header lines as trailers once the message is complete.
  req.complete = true;
  req._addHeaderLines(fields, fields.length);
}

function onRequestEnd(this: DowngradedStream): void {
  const req = this[kView]?.request;
  if (req !== undefined && endedByClient(this)) completeRequest(req);
}

function completeRequest(req: IncomingMessage): void {
  (req as unknown as IncomingInternals).complete = true;
  req.push(null);
}

/**
 * node:http2 ends the readable side of a stream the client reset as it ends one the client finished
 * (END_STREAM); a body cut short must not look complete (the stream's close aborts the request instead).
 */
function endedByClient(stream: ServerHttp2Stream): boolean {
  return !stream.aborted && !(stream.closed && stream.rstCode !== h2constants.NGHTTP2_NO_ERROR);
}

function onResponseFinish(this: DowngradedResponse): void {
  // As node:http does: a body nobody read is drained, so the stream can close.
  const req = this.view.request as unknown as IncomingInternals;
  if (!req._consuming && !req._readableState.resumeScheduled) req._dump();
}

function onStreamClose(this: DowngradedStream): void {
  const view = this[kView];
  if (view === undefined) return;
  const req = view.request as unknown as IncomingInternals & IncomingMessage;
  const res = view._httpMessage as (DowngradedResponse & ResponseInternals) | null;
  if (!req.destroyed && (!req.complete || (res !== null && !res.finished))) {
    req.destroy(Object.assign(new Error("aborted"), { code: "ECONNRESET" }));
  }
  if (res !== null && !res._closed) {
    res.destroyed = true;
    res._closed = true;
    res.emit("close");
  }
  // node can keep a closed stream object for a while after 'close'; the request and response must not
  // live on with it. They were, and survived enough scavenges to be promoted: under load the old
  // generation then filled every few hundred ms (17–20 mark-compacts per 4 s, against node:http2's 6)
  // and CPU per request rose by a third once the process had been idle (bench S1d).
  this[kView] = undefined;
}

function withoutPseudoHeaders(raw: readonly string[]): string[] {
  const fields: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] as string;
    if (name.charCodeAt(0) === 0x3a) continue;
    fields.push(name, raw[i + 1] as string);
  }
  return fields;
}

/** Request fields an HTTP/2 request cannot hand an HTTP/1 application (pseudo-headers apart). */
const DROP_REQUEST = new Set([...CONNECTION_SPECIFIC_FIELDS, "te"]);

export interface DowngradeOptions {
  readonly address: DowngradeAddress;
  /** The version `l5d-orig-proto` named (echoed on the response), or undefined for a plain HTTP/2 request. */
  readonly origProto: OrigProto | undefined;
}

/**
 * Builds the HTTP/1 request and response for one authorized HTTP/2 stream. `rawHeaders` is the stream's
 * raw header list as the gate left it (identity set, `l5d-orig-proto` taken, route filters applied). The
 * caller attaches the mesh context and runs the handler.
 */
export function downgradeStream(
  stream: ServerHttp2Stream,
  rawHeaders: readonly string[],
  options: DowngradeOptions,
): { readonly req: IncomingMessage; readonly res: ServerResponse } {
  if (MISSING_INTERNALS.length > 0) {
    throw new MeshError(
      MeshErrorCode.INTERNAL,
      `node:http on Node ${process.version} lacks ${MISSING_INTERNALS.join(", ")}: HTTP/2 requests cannot be served to an HTTP/1 handler (set http2Compat for a handler that takes node:http2 compat objects)`,
    );
  }
  const view = new StreamSocket(stream as DowngradedStream, options.address);
  let method = "GET";
  let path = "/";
  let authority: string | undefined;
  let host = false;
  let contentLength = false;
  const fields: string[] = [];
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as string;
    const value = rawHeaders[i + 1] as string;
    if (name.charCodeAt(0) === 0x3a) {
      if (name === ":method") method = value;
      else if (name === ":path") path = value;
      else if (name === ":authority") authority = value;
      continue;
    }
    // HTTP/2 field names arrive lowercase.
    if (DROP_REQUEST.has(name)) continue;
    if (name === "host") host = true;
    else if (name === "content-length") contentLength = true;
    fields.push(name, value);
  }
  // A body of unknown length goes to an HTTP/1 server chunked (as Linkerd's downgrade sends it), and
  // body parsers look for one of the two headers before they read anything.
  if (!contentLength && !stream.endAfterHeaders) fields.push("transfer-encoding", "chunked");
  // An HTTP/1.1 application expects Host; HTTP/2 carries it as :authority.
  if (!host) {
    fields.unshift(
      "host",
      authority !== undefined && authority !== ""
        ? authority
        : `${options.address.localAddress ?? "localhost"}:${options.address.localPort ?? 80}`,
    );
  }

  const req = new MeshIncomingMessage(view as unknown as Socket);
  view.request = req;
  const http10 = options.origProto === "HTTP/1.0";
  req.httpVersionMajor = 1;
  req.httpVersionMinor = http10 ? 0 : 1;
  req.httpVersion = http10 ? "1.0" : "1.1";
  req.method = method;
  req.url = path;
  (req as unknown as IncomingInternals)._addHeaderLines(fields, fields.length);

  const res = new DowngradedResponse(req, view, options.origProto);
  view._httpMessage = res;
  (res as { socket: unknown }).socket = view;

  const downgraded = stream as DowngradedStream;
  downgraded[kView] = view;
  if (stream.readableEnded || stream.endAfterHeaders) {
    completeRequest(req);
  } else {
    downgraded.on("data", onRequestData);
    downgraded.on("trailers", onRequestTrailers);
    downgraded.on("end", onRequestEnd);
  }
  // Each fires once: plain listeners, without a `once` wrapper per request.
  downgraded.on("close", onStreamClose);
  res.on("finish", onResponseFinish);
  return { req, res };
}
