import { readFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { afterAll, describe, expect, it } from "vitest";
import { freeLoopbackPort } from "../src/ports.js";

const [ephemeralLow] = readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8")
  .trim()
  .split(/\s+/)
  .map(Number);

const held: Server[] = [];
afterAll(async () => {
  for (const server of held) await new Promise((resolve) => server.close(resolve));
});

function listen(port: number, host: string): Promise<Server> {
  const server = createServer();
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve(server));
  });
}

describe("freeLoopbackPort", () => {
  it("hands out distinct ports below the kernel's ephemeral range, each one listenable", async () => {
    const ports: number[] = [];
    for (let i = 0; i < 20; i++) ports.push(await freeLoopbackPort("127.0.0.1"));
    expect(new Set(ports).size).toBe(ports.length);
    for (const port of ports) {
      expect(port).toBeGreaterThanOrEqual(10_000);
      expect(port).toBeLessThan(ephemeralLow ?? 32_768);
      held.push(await listen(port, "127.0.0.1"));
    }
  });

  it("skips a port something else holds, whichever loopback address asks", async () => {
    const first = await freeLoopbackPort("127.0.0.1");
    held.push(await listen(first, "127.0.0.1"));
    // Walk the whole slice back round to the held port: it is never handed out while held.
    for (let i = 0; i < 1_000; i++) expect(await freeLoopbackPort("127.0.0.1")).not.toBe(first);
  });

  it("given several addresses, hands out only a port free on every one of them", async () => {
    const taken = await freeLoopbackPort("127.0.18.2");
    held.push(await listen(taken, "127.0.18.2"));
    // Walk the whole slice round: the port held on one address never comes back, though the other is free.
    for (let i = 0; i < 1_000; i++) {
      const port = await freeLoopbackPort(["127.0.18.1", "127.0.18.2"]);
      expect(port).not.toBe(taken);
    }
    const port = await freeLoopbackPort(["127.0.18.1", "127.0.18.2"]);
    for (const host of ["127.0.18.1", "127.0.18.2"]) held.push(await listen(port, host));
  });

  it("fails with the system's error for an address this machine does not have", async () => {
    await expect(freeLoopbackPort("192.0.2.1")).rejects.toMatchObject({ code: "EADDRNOTAVAIL" });
  });
});
