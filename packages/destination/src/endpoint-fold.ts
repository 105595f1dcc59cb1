import { MeshError, MeshErrorCode } from "@inmesh/core";
import { BinaryReader, destination, net, WireType } from "@inmesh/proto";
import {
  addressKey,
  createEndpointConverter,
  createEndpointSet,
  deriveEndpointSet,
  type Endpoint,
  type EndpointSet,
  NO_ENDPOINTS,
  onEndpointsCapped,
  sameEndpoint,
} from "./endpoint.js";
import { LIMITS } from "./limits.js";

/** How much one `step()` may do: until `deadline` (a `performance.now()` value) or `maxEntries` addresses. */
export interface FoldBudget {
  readonly deadline?: number;
  readonly maxEntries?: number;
}

/** What one `step()` produced: a value to publish, and the message that failed, if one did. */
export interface FoldStep<TValue> {
  readonly value: TValue | undefined;
  readonly failure?: { readonly stream: number; readonly error: MeshError };
}

/**
 * Folds a stream's raw messages into a value across event-loop turns. `push` queues a message (and
 * throws a MeshError when its envelope is malformed or too large); `step` does a bounded amount of the
 * queued work, in order, and returns the value to publish when whole messages changed it.
 */
export interface MessageFold<TValue> {
  push(bytes: Uint8Array, stream: number): void;
  step(budget: FoldBudget): FoldStep<TValue>;
  /** Queued or unfinished messages remain, or a publication. */
  pending(): boolean;
  /** Bytes of the messages waiting behind the one being applied (for backpressure). */
  backlogBytes(): number;
  clear(): void;
}

const NOT_EXISTS: EndpointSet = createEndpointSet(false, []);

/** Addresses between two deadline checks while converting (~2.5 µs each). */
const CHECK_EVERY = 64;
/** Entries between two deadline checks while indexing a message (~0.1 µs each). */
const SCAN_CHECK_EVERY = 2048;

type Kind = "add" | "remove" | "noEndpoints" | "empty";

interface QueuedMessage {
  readonly stream: number;
  readonly bytes: Uint8Array;
  readonly kind: Kind;
  /** The oneof's nested message: [start, end) in `bytes`. */
  readonly start: number;
  readonly end: number;
  readonly exists: boolean;
  /** Decided when the message starts: the first effective message of a stream replaces the state. */
  reset: boolean;
  started: boolean;
  scanned: boolean;
  /** Scan position in `bytes`, then the next entry to apply (index into `ranges`, in pairs). */
  cursor: number;
  next: number;
  ranges: number[];
  labels: Record<string, string>;
  convert: ((addr: destination.WeightedAddr) => Endpoint | undefined) | undefined;
  /** Add: changed endpoints by address; remove: addresses present. Applied on commit only. */
  readonly upserts: Map<string, Endpoint>;
  readonly removals: Set<string>;
  size: number;
  valid: number;
  dropped: number;
  /** Set once the message was read whole: its changes are being applied to the pending state. */
  commit: CommitPhase[] | undefined;
  effective: boolean;
}

function malformed(message: string, cause?: unknown): MeshError {
  return new MeshError(MeshErrorCode.PROTO_DECODE, `malformed destination.Update: ${message}`, {
    ...(cause === undefined ? {} : { cause }),
  });
}

/** Part of a commit: `apply` for each item, listed when the phase starts (after the ones before it). */
interface CommitPhase {
  readonly list: () => readonly unknown[];
  readonly apply: (item: never) => void;
  items?: readonly unknown[];
  index: number;
}

function phase<T>(list: () => readonly T[], apply: (item: T) => void): CommitPhase {
  return { list, apply: apply as (item: never) => void, index: 0 };
}

/**
 * The state after the messages committed so far, kept as changes over the last published set so that
 * publishing costs the size of the changes and consumers receive them as one delta.
 */
class PendingSet {
  /** The set the changes apply to: the last published one, or a reset (no endpoints / not existing). */
  base: EndpointSet | undefined;
  upserts = new Map<string, Endpoint>();
  removed = new Set<string>();
  size = 0;

  get exists(): boolean {
    return this.base?.exists ?? true;
  }

  get(address: string): Endpoint | undefined {
    if (this.base === undefined || this.removed.has(address)) return undefined;
    return this.upserts.get(address) ?? this.base.get(address);
  }

  upsert(endpoint: Endpoint): void {
    const base = this.base ?? NO_ENDPOINTS;
    this.base = base;
    const address = endpoint.address;
    const had = this.get(address) !== undefined;
    const original = base.get(address);
    this.removed.delete(address);
    if (original !== undefined && sameEndpoint(original, endpoint)) this.upserts.delete(address);
    else this.upserts.set(address, endpoint);
    if (!had) this.size += 1;
  }

  remove(address: string): void {
    if (this.base === undefined) this.base = NO_ENDPOINTS;
    if (this.get(address) === undefined) return;
    this.upserts.delete(address);
    if (this.base.get(address) !== undefined) this.removed.add(address);
    this.size -= 1;
  }

  /**
   * Makes the state exactly `endpoints` (existing), as changes over the last published set where it
   * exists: consumers then receive the differences, and a resync that changes nothing, nothing. Returns
   * the work as phases, for the caller to run in slices.
   */
  replace(endpoints: Map<string, Endpoint>, published: EndpointSet | undefined): CommitPhase[] {
    if (this.base === undefined || !this.base.exists)
      this.resetTo(published?.exists ? published : NO_ENDPOINTS);
    const base = this.base as EndpointSet;
    if (base.size === 0 && this.upserts.size === 0) {
      // Into an empty set (the first message, mostly): the message's map is the state, not copied.
      this.upserts = endpoints;
      this.size = endpoints.size;
      return [];
    }
    const drop = (address: string) => {
      if (!endpoints.has(address)) this.remove(address);
    };
    return [
      phase(
        () => base.endpoints,
        (endpoint) => drop(endpoint.address),
      ),
      phase(() => [...this.upserts.keys()], drop),
      phase(
        () => [...endpoints.values()],
        (endpoint) => this.upsert(endpoint),
      ),
    ];
  }

  resetTo(set: EndpointSet): void {
    this.base = set;
    this.upserts = new Map();
    this.removed = new Set();
    this.size = set.size;
  }

  /** The set to publish after `published`, or undefined when nothing changed; the changes start over. */
  take(published: EndpointSet | undefined): EndpointSet | undefined {
    const base = this.base;
    if (base === undefined) return undefined;
    let next: EndpointSet;
    if (this.upserts.size === 0 && this.removed.size === 0) {
      if (base === published) return undefined;
      if (published && published.exists === base.exists && published.size === 0 && base.size === 0) {
        this.resetTo(published);
        return undefined;
      }
      next = base;
    } else {
      next = deriveEndpointSet(base, this.upserts, this.removed);
    }
    this.resetTo(next);
    return next;
  }
}

/**
 * Destination.Get updates applied in bounded slices (contract §8.2). A message is indexed without
 * decoding (the offsets of its addresses), then its addresses are decoded and converted a slice at a
 * time; its changes are committed only when the whole message was read, so a malformed address late in
 * a message refuses it whole, as a one-shot decode would. Messages are applied in order; a `noEndpoints`
 * or the first message of a newer stream supersedes the queued and unfinished ones, whose outcome it
 * replaces. Consecutive committed messages are published as one set.
 */
export function createEndpointUpdateFold(options: {
  readonly maxMessageBytes: number;
}): MessageFold<EndpointSet> {
  const queue: QueuedMessage[] = [];
  const pending = new PendingSet();
  let published: EndpointSet | undefined;
  /** The stream of the last message that took effect; a message of another stream starts afresh. */
  let effectiveStream: number | undefined;
  let backlog = 0;
  /** Whole messages are committed but not yet published: the next step publishes first. */
  let publishDue = false;

  const parse = (bytes: Uint8Array, stream: number): QueuedMessage => {
    if (bytes.byteLength > options.maxMessageBytes) {
      throw new MeshError(
        MeshErrorCode.PROTO_TOO_LARGE,
        `destination.Update of ${bytes.byteLength} bytes exceeds the ${options.maxMessageBytes}-byte limit`,
        { details: { size: bytes.byteLength, maxBytes: options.maxMessageBytes } },
      );
    }
    let kind: Kind = "empty";
    let start = 0;
    let end = 0;
    let exists = true;
    try {
      const reader = new BinaryReader(bytes);
      while (reader.pos < bytes.byteLength) {
        const [fieldNo, wireType] = reader.tag();
        if (wireType === WireType.EndGroup) throw new Error(`unexpected end-group tag for field ${fieldNo}`);
        if (fieldNo >= 1 && fieldNo <= 3 && wireType === WireType.LengthDelimited) {
          const length = reader.uint32();
          start = reader.pos;
          end = start + length;
          if (end > bytes.byteLength) throw new Error("premature end of input");
          reader.pos = end;
          // As the generated decoder: the last member of the oneof wins.
          kind = fieldNo === 1 ? "add" : fieldNo === 2 ? "remove" : "noEndpoints";
        } else {
          reader.skip(wireType, fieldNo);
        }
      }
      if (kind === "noEndpoints") {
        const reader = new BinaryReader(bytes);
        reader.pos = start;
        exists = destination.NoEndpoints.decode(reader, end - start).exists;
        if (reader.pos !== end) throw new Error("NoEndpoints decoder stopped early");
      }
    } catch (error) {
      throw error instanceof MeshError ? error : malformed((error as Error).message, error);
    }
    return {
      stream,
      bytes,
      kind,
      start,
      end,
      exists,
      reset: false,
      started: false,
      scanned: false,
      cursor: start,
      next: 0,
      ranges: [],
      labels: Object.create(null),
      convert: undefined,
      upserts: new Map(),
      removals: new Set(),
      size: 0,
      valid: 0,
      dropped: 0,
      commit: undefined,
      effective: false,
    };
  };

  /** Bytes queued behind the message being applied. */
  const recount = () => {
    backlog = 0;
    for (let i = 1; i < queue.length; i += 1) backlog += (queue[i] as QueuedMessage).bytes.byteLength;
  };

  /** Drops queued messages; one whose changes are being applied finishes first (never half applied). */
  const drop = (keep: (message: QueuedMessage) => boolean) => {
    for (let i = queue.length - 1; i >= 0; i -= 1) {
      const message = queue[i] as QueuedMessage;
      if (!keep(message) && message.commit === undefined) queue.splice(i, 1);
    }
    recount();
  };

  /** The state a message of `message.reset` reads: empty when it replaces the state. */
  const current = (message: QueuedMessage, address: string): Endpoint | undefined =>
    message.upserts.get(address) ?? (message.reset ? undefined : pending.get(address));

  /** Indexes the addresses of an add or remove; returns false when the deadline came first. */
  const scan = (message: QueuedMessage, outOfTime: () => boolean): boolean => {
    const reader = new BinaryReader(message.bytes);
    reader.pos = message.cursor;
    let count = 0;
    while (reader.pos < message.end) {
      if (++count % SCAN_CHECK_EVERY === 0 && outOfTime()) {
        message.cursor = reader.pos;
        return false;
      }
      const [fieldNo, wireType] = reader.tag();
      if (wireType === WireType.EndGroup) throw new Error(`unexpected end-group tag for field ${fieldNo}`);
      if (fieldNo === 1 && wireType === WireType.LengthDelimited) {
        const length = reader.uint32();
        const from = reader.pos;
        if (from + length > message.end) throw new Error("premature end of an address");
        message.ranges.push(from, from + length);
        reader.pos = from + length;
      } else if (fieldNo === 2 && wireType === WireType.LengthDelimited && message.kind === "add") {
        const entry = destination.WeightedAddrSet_MetricLabelsEntry.decode(reader, reader.uint32());
        if (entry.value !== undefined) message.labels[entry.key] = entry.value;
      } else {
        reader.skip(wireType, fieldNo);
      }
    }
    if (reader.pos !== message.end) throw new Error("premature end of an address set");
    message.scanned = true;
    message.convert = message.kind === "add" ? createEndpointConverter(message.labels) : undefined;
    return true;
  };

  /** The `ip:port` of a WeightedAddr without decoding the rest (for addresses past the cap). */
  const entryAddress = (reader: BinaryReader, from: number, to: number): string | undefined => {
    reader.pos = from;
    let tcp: net.TcpAddress | undefined;
    while (reader.pos < to) {
      const [fieldNo, wireType] = reader.tag();
      if (fieldNo === 1 && wireType === WireType.LengthDelimited) {
        tcp = net.TcpAddress.decode(reader, reader.uint32());
      } else {
        reader.skip(wireType, fieldNo);
      }
    }
    return addressKey(tcp);
  };

  /** Decodes and converts a slice of addresses; returns false when the budget ran out first. */
  const applyEntries = (
    message: QueuedMessage,
    outOfTime: () => boolean,
    entries: { left: number },
  ): boolean => {
    const reader = new BinaryReader(message.bytes);
    const ranges = message.ranges;
    while (message.next < ranges.length) {
      if (entries.left <= 0) return false;
      if (message.next % (2 * CHECK_EVERY) === 0 && message.next > 0 && outOfTime()) return false;
      const from = ranges[message.next] as number;
      const to = ranges[message.next + 1] as number;
      message.next += 2;
      entries.left -= 1;
      if (message.kind === "remove") {
        reader.pos = from;
        const tcp = net.TcpAddress.decode(reader, to - from);
        if (reader.pos !== to) throw new Error("address decoder stopped early");
        const key = addressKey(tcp);
        if (key !== undefined && !message.reset && pending.get(key) !== undefined) message.removals.add(key);
        continue;
      }
      // Past the cap only updates of known addresses can apply: new ones are not even decoded, so the
      // work stays proportional to the cap, not to what the message holds.
      if (
        message.size >= LIMITS.maxEndpoints &&
        current(message, entryAddress(reader, from, to) ?? "") === undefined
      ) {
        message.dropped += 1;
        continue;
      }
      reader.pos = from;
      const addr = destination.WeightedAddr.decode(reader, to - from);
      if (reader.pos !== to) throw new Error("address decoder stopped early");
      const endpoint = (message.convert as NonNullable<QueuedMessage["convert"]>)(addr);
      if (endpoint === undefined) continue;
      message.valid += 1;
      const existing = current(message, endpoint.address);
      if (existing !== undefined && sameEndpoint(existing, endpoint)) continue;
      if (existing === undefined) message.size += 1;
      message.upserts.set(endpoint.address, endpoint);
    }
    return true;
  };

  const start = (message: QueuedMessage) => {
    message.started = true;
    message.reset = message.stream !== effectiveStream || !pending.exists;
    message.size = message.reset ? 0 : pending.size;
  };

  /** The changes of a message read whole, as phases; `effective` false when it is ignored. */
  const prepareCommit = (message: QueuedMessage): CommitPhase[] => {
    message.effective = true;
    switch (message.kind) {
      case "empty":
        message.effective = false;
        return [];
      case "noEndpoints":
        if (message.exists) return pending.replace(new Map(), published);
        pending.resetTo(NOT_EXISTS);
        return [];
      case "add":
        if (message.dropped > 0) onEndpointsCapped(message.dropped);
        // As linkerd2-proxy: an add with no valid address is ignored.
        if (message.valid === 0 && message.dropped === 0) {
          message.effective = false;
          return [];
        }
        // Into an empty state, adding is replacing (and then the message's map is taken as it is).
        if (message.reset || (pending.size === 0 && pending.exists))
          return pending.replace(message.upserts, published);
        return [
          phase(
            () => [...message.upserts.values()],
            (endpoint) => pending.upsert(endpoint),
          ),
        ];
      case "remove":
        if (message.reset) return pending.replace(new Map(), published);
        return [
          phase(
            () => [...message.removals],
            (address) => pending.remove(address),
          ),
        ];
    }
  };

  /** Runs the commit's phases; false when the budget ran out first. */
  const commitSlice = (
    message: QueuedMessage,
    outOfTime: () => boolean,
    entries: { left: number },
  ): boolean => {
    const phases = message.commit as CommitPhase[];
    for (const current of phases) {
      current.items ??= current.list();
      const items = current.items;
      while (current.index < items.length) {
        if (entries.left <= 0) return false;
        if (current.index % CHECK_EVERY === 0 && current.index > 0 && outOfTime()) return false;
        entries.left -= 1;
        current.apply(items[current.index] as never);
        current.index += 1;
      }
    }
    return true;
  };

  return {
    push(bytes, stream) {
      const message = parse(bytes, stream);
      // Superseded: a newer stream starts from scratch, and `noEndpoints` replaces whatever came before.
      if (message.kind === "noEndpoints") drop(() => false);
      else drop((queued) => queued.stream >= stream);
      queue.push(message);
      recount();
    },

    step(budget) {
      const deadline = budget.deadline;
      const outOfTime = deadline === undefined ? () => false : () => performance.now() >= deadline;
      const began = deadline === undefined ? 0 : performance.now();
      /** Consumers apply a publication in the same turn: past half the slice, it gets a turn of its own. */
      const halfSpent =
        deadline === undefined ? () => false : () => performance.now() - began > (deadline - began) / 2;
      if (publishDue) {
        // A turn of its own for the publication: consumers apply it with the whole slice to spare.
        publishDue = false;
        const value = pending.take(published);
        if (value !== undefined) published = value;
        return { value };
      }
      const entries = { left: budget.maxEntries ?? Number.POSITIVE_INFINITY };
      let failure: FoldStep<EndpointSet>["failure"];
      let committed = false;
      while (queue.length > 0) {
        const message = queue[0] as QueuedMessage;
        if (!message.started) start(message);
        try {
          if (message.commit === undefined) {
            if ((message.kind === "add" || message.kind === "remove") && !message.scanned) {
              if (!scan(message, outOfTime)) break;
            }
            if (!applyEntries(message, outOfTime, entries)) break;
            message.commit = prepareCommit(message);
          }
        } catch (error) {
          // Refused whole, with the rest of its stream: the watch restarts that stream.
          const stream = message.stream;
          drop((queued) => queued.stream !== stream);
          failure = {
            stream,
            error: error instanceof MeshError ? error : malformed((error as Error).message, error),
          };
          break;
        }
        if (!commitSlice(message, outOfTime, entries)) break;
        queue.shift();
        recount();
        if (message.effective) effectiveStream = message.stream;
        committed = true;
        if (entries.left <= 0 || outOfTime()) break;
      }
      // Never a state with a message half applied; and not in a turn whose slice is spent already.
      let value: EndpointSet | undefined;
      if (queue[0]?.commit === undefined) {
        if (committed && failure === undefined && halfSpent()) publishDue = true;
        else value = pending.take(published);
      }
      if (value !== undefined) published = value;
      return failure ? { value, failure } : { value };
    },

    pending: () => queue.length > 0 || publishDue,
    backlogBytes: () => backlog,
    clear() {
      queue.length = 0;
      publishDue = false;
      backlog = 0;
    },
  };
}
