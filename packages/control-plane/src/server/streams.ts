import { debuglog } from "node:util";
import { type ServerWritableStream, status } from "@grpc/grpc-js";
import type { LookupError } from "../model/index.js";

const debug = debuglog("mesh");

/** An open server stream that recomputes its message when the cluster state changes. */
export interface ActiveWatch {
  refresh(): void;
  /** Ends the stream with OK (shutdown). */
  end(): void;
}

/** Every open watch of one control plane, so a reload reaches all of them and close() ends them all. */
export interface WatchRegistry {
  add(watch: ActiveWatch): () => void;
  refreshAll(): void;
  endAll(): void;
  readonly size: number;
}

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
    endAll() {
      for (const watch of [...watches]) watch.end();
      watches.clear();
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
      if (!open) return;
      stop();
      call.end();
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
