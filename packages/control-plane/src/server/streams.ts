import { debuglog } from "node:util";
import { type ServerWritableStream, status } from "@grpc/grpc-js";
import type { LookupError } from "../model/index.js";

const debug = debuglog("mesh");

/** An open server stream that recomputes its message when the cluster state changes. */
export interface ActiveWatch {
  refresh(): void;
  /** Ends the stream with OK (shutdown); resolves once the status has been handed to the transport. */
  end(): Promise<void>;
}

/** Every open watch of one control plane, so a reload reaches all of them and close() ends them all. */
export interface WatchRegistry {
  add(watch: ActiveWatch): () => void;
  refreshAll(): void;
  /** Ends every watch with OK and waits (bounded) until their statuses are flushed. */
  endAll(): Promise<void>;
  readonly size: number;
}

const END_FLUSH_TIMEOUT_MS = 1000;

export function createWatchRegistry(): WatchRegistry {
  const watches = new Set<ActiveWatch>();
  return {
    add(watch) {
      watches.add(watch);
      return () => watches.delete(watch);
    },
    refreshAll() {
      for (const watch of [...watches]) watch.refresh();
    },
    async endAll() {
      const ending = [...watches].map((watch) => watch.end());
      watches.clear();
      // A server shutdown that starts before the OK trailers are written drops the connection under
      // them (seen on Node 24), so the clients would see UNAVAILABLE instead of a clean end.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.allSettled(ending),
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, END_FLUSH_TIMEOUT_MS);
          timer.unref();
        }),
      ]);
      clearTimeout(timer);
    },
    get size() {
      return watches.size;
    },
  };
}

export const LOOKUP_STATUS: Readonly<Record<LookupError["code"], status>> = {
  InvalidArgument: status.INVALID_ARGUMENT,
  NotFound: status.NOT_FOUND,
};

/** What a grpc-js handler emits to end a call with a status. */
export function statusError(
  code: status,
  details: string,
): { code: status; details: string; message: string } {
  return { code, details, message: details };
}

/**
 * The plumbing every watch shares: registration, unregistration on cancel/finish, and write coalescing.
 * A client that stops reading never makes the server queue: while a write is pending further state changes
 * only mark the stream dirty, and the newest state is computed and written once the stream drains. That is
 * correct for both kinds of stream we serve, full snapshots and diffs against what was last written.
 */
export function attachWatch<Req, Res>(
  call: ServerWritableStream<Req, Res>,
  registry: WatchRegistry,
  compute: () => void,
): { write(message: Res): void; fail(code: status, details: string): void; refresh(): void } {
  // A client that cancelled before the handler ran gets no events any more; never register it.
  let open = !call.cancelled;
  let congested = false;
  let dirty = false;
  // A bug in a lookup must end this stream, never escape into the reload that triggered it.
  const refresh = () => {
    try {
      compute();
    } catch (error) {
      debug("control-plane: %s lookup failed: %s", call.getPath(), (error as Error).stack);
      fail(status.INTERNAL, `internal error: ${(error as Error).message}`);
    }
  };
  const onDrain = () => {
    congested = false;
    if (dirty && open) {
      dirty = false;
      refresh();
    }
  };
  const watch: ActiveWatch = {
    refresh() {
      if (!open) return;
      if (congested) dirty = true;
      else refresh();
    },
    end() {
      if (!open) return Promise.resolve();
      stop();
      return new Promise<void>((resolve) => {
        call.once("close", () => resolve());
        call.end();
      });
    },
  };
  const unregister = open ? registry.add(watch) : () => false;
  const stop = () => {
    open = false;
    unregister();
    call.off("drain", onDrain);
  };
  function fail(code: status, details: string): void {
    if (!open) return;
    stop();
    call.emit("error", statusError(code, details));
  }
  call.on("drain", onDrain);
  call.on("cancelled", stop);
  call.on("close", stop);
  call.on("finish", stop);
  call.on("error", (error) => {
    debug("control-plane: stream %s failed: %s", call.getPath(), (error as Error).message);
    stop();
  });
  return {
    write(message) {
      if (!open) return;
      if (!call.write(message)) congested = true;
    },
    fail,
    refresh,
  };
}

export type Lookup<T> = { ok: true; value: T } | LookupError;

/**
 * A snapshot watch (WatchPort, OutboundPolicies.Watch, GetProfile): the first message right away, as the
 * contract requires, then a new message whenever the encoded value changes. A lookup that starts failing
 * ends the stream with the controller's status; the client re-subscribes and gets the error again.
 */
export function serveSnapshotWatch<Req, Res>(
  call: ServerWritableStream<Req, Res>,
  registry: WatchRegistry,
  lookup: () => Lookup<Res>,
  encode: (message: Res) => Uint8Array,
): void {
  let last: Buffer | undefined;
  const stream = attachWatch(call, registry, () => refresh());
  function refresh(): void {
    const result = lookup();
    if (!result.ok) {
      stream.fail(LOOKUP_STATUS[result.code], result.message);
      return;
    }
    const bytes = Buffer.from(encode(result.value));
    if (last !== undefined && bytes.equals(last)) return;
    last = bytes;
    stream.write(result.value);
  }
  stream.refresh();
}
