import type { ControlPlane } from "@inmesh/control-plane";
import type { Discovery } from "@inmesh/destination";
import type { IdentityProvider } from "@inmesh/identity";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createMeshDispatcher, type MeshDispatcher } from "../../src/index.js";
import {
  CLIENT_POD,
  controlPlaneDiscovery,
  eventually,
  manifests,
  podIdentity,
  podYaml,
  serviceYaml,
  startMeshedBackend,
  startPlainBackend,
  startTestControlPlane,
  type TestBackend,
} from "./support.js";

const BOOKS = "http://books.default.svc.cluster.local";
const PLAIN = "http://plain.default.svc.cluster.local";

/** Runs `total` requests with `concurrency` workers; returns the errors (requests never throw here). */
async function load(
  dispatcher: MeshDispatcher,
  base: string,
  total: number,
  concurrency: number,
  onProgress?: (done: number) => void | Promise<void>,
): Promise<{ errors: unknown[]; statuses: number[] }> {
  const errors: unknown[] = [];
  const statuses: number[] = [];
  let next = 0;
  let done = 0;
  const worker = async () => {
    while (next < total) {
      next += 1;
      try {
        const response = await request(`${base}/load`, { dispatcher, method: "POST", body: "x" });
        statuses.push(response.statusCode);
        await response.body.text();
      } catch (error) {
        errors.push(error);
      }
      done += 1;
      await onProgress?.(done);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { errors, statuses };
}

describe("balancing", () => {
  let cp: ControlPlane;
  let clientIdentity: IdentityProvider;
  const identities: IdentityProvider[] = [];
  const books: TestBackend[] = [];
  const plain: TestBackend[] = [];
  let discovery: Discovery;
  let dispatcher: MeshDispatcher;

  const cluster = (bookPorts: number[], plainPorts: number[]) =>
    manifests(
      podYaml(CLIENT_POD),
      ...bookPorts.map((port, i) => podYaml({ name: `books-${i}`, sa: "books", app: "books", port })),
      ...plainPorts.map((port, i) =>
        podYaml({ name: `plain-${i}`, sa: "plain", app: "plain", port, meshed: false }),
      ),
      serviceYaml("books", "books"),
      serviceYaml("plain", "plain"),
    );

  beforeAll(async () => {
    cp = await startTestControlPlane(cluster([1, 2, 3], [4, 5, 6]));
    clientIdentity = await podIdentity(cp, CLIENT_POD.name, CLIENT_POD.sa);
    for (let i = 0; i < 3; i += 1) {
      const identity = await podIdentity(cp, `books-${i}`, "books");
      identities.push(identity);
      books.push(await startMeshedBackend(`books-${i}`, identity));
      plain.push(await startPlainBackend(`plain-${i}`));
    }
    cp.setManifests(
      cluster(
        books.map((b) => b.port),
        plain.map((b) => b.port),
      ),
    );
    discovery = controlPlaneDiscovery(cp);
    dispatcher = createMeshDispatcher({ identity: clientIdentity, discovery });
  });

  afterAll(async () => {
    await dispatcher?.close();
    await discovery?.close();
    await Promise.all([...books, ...plain].map((backend) => backend.close()));
    await Promise.all([clientIdentity, ...identities].map((identity) => identity?.close()));
    await cp?.close();
  });

  it("sends most traffic away from a slow endpoint (peak-EWMA P2C)", async () => {
    const slow = books[2] as TestBackend;
    for (const backend of books) {
      backend.handler =
        backend === slow
          ? (_req, res) => {
              setTimeout(() => res.end("slow"), 100);
            }
          : (_req, res) => {
              res.end("fast");
            };
    }
    const { errors } = await load(dispatcher, BOOKS, 300, 6);
    expect(errors).toEqual([]);
    const counts = books.map((b) => b.requests.length);
    expect(counts.reduce((a, b) => a + b, 0)).toBe(300);
    const slowCount = slow.requests.length;
    // Loose bounds: the slow endpoint keeps getting the odd probe, but far fewer than its fair third.
    expect(slowCount).toBeLessThan(0.2 * 300);
    for (const backend of books)
      if (backend !== slow) expect(backend.requests.length).toBeGreaterThan(slowCount);
  });

  const removalUnderLoad = async (kind: "plain" | "meshed") => {
    const group = kind === "plain" ? plain : books;
    const base = kind === "plain" ? PLAIN : BOOKS;
    for (const backend of group) {
      backend.requests.length = 0;
      backend.arrivals = 0;
      backend.handler = (_req, res) => {
        setTimeout(() => res.end("ok"), 5);
      };
    }
    const removed = group[2] as TestBackend;
    const kept = group.slice(0, 2);
    let removedAt = -1;
    let closing: Promise<void> | undefined;
    const remainingPorts = () =>
      kind === "plain"
        ? cluster(
            books.map((b) => b.port),
            kept.map((b) => b.port),
          )
        : cluster(
            kept.map((b) => b.port),
            plain.slice(0, 2).map((b) => b.port),
          );
    const { errors, statuses } = await load(dispatcher, base, 600, 8, async (done) => {
      if (done === 150) {
        removedAt = removed.arrivals;
        cp.setManifests(remainingPorts());
      }
      if (done === 300 && !closing) closing = removed.close();
    });
    await closing;
    expect(errors).toEqual([]);
    expect(statuses.every((status) => status === 200)).toBe(true);
    expect(removedAt).toBeGreaterThan(0);
    // In flight at removal plus the discovery update's own latency: a handful at most.
    expect(removed.arrivals - removedAt).toBeLessThan(60);
    const before = removed.arrivals;
    const after = await load(dispatcher, base, 60, 4);
    expect(after.errors).toEqual([]);
    expect(removed.arrivals).toBe(before);
    await eventually(() => kept.every((b) => b.requests.length > 0), 1000, "remaining endpoints used");
  };

  it("drains a plaintext endpoint removed under load, then loses nothing when it shuts down", async () => {
    await removalUnderLoad("plain");
  });

  it("drains a meshed (HTTP/2) endpoint removed under load, then loses nothing when it shuts down", async () => {
    await removalUnderLoad("meshed");
  });
});
