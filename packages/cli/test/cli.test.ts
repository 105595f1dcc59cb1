import { mkdir, mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { credentials, status } from "@grpc/grpc-js";
import { main } from "@inmesh/cli";
import { inbound } from "@inmesh/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { captureIo, eventually } from "./helpers.js";

const EPHEMERAL = ["--identity-port", "0", "--destination-port", "0", "--policy-port", "0"];

describe("inmesh CLI", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "inmesh-cli-"));
    await mkdir(path.join(dir, "manifests"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("lists its commands and refuses unknown ones", async () => {
    const help = captureIo(dir);
    expect(await main(["--help"], help)).toBe(0);
    expect(help.out()).toContain("control-plane");
    expect(help.out()).toContain("env");

    const version = captureIo(dir);
    expect(await main(["--version"], version)).toBe(0);
    expect(version.out()).toMatch(/^\d+\.\d+\.\d+\S*\n$/);

    const unknown = captureIo(dir);
    expect(await main(["frobnicate"], unknown)).toBe(2);
    expect(unknown.err()).toContain('unknown command "frobnicate"');
  });

  it("answers usage mistakes with one clear line and exit code 2", async () => {
    const missing = captureIo(dir);
    expect(await main(["control-plane"], missing)).toBe(2);
    expect(missing.err().split("\n")[0]).toBe("inmesh control-plane: --manifests DIR is required");

    const badPort = captureIo(dir);
    expect(await main(["control-plane", "--manifests", "manifests", "--policy-port", "http"], badPort)).toBe(
      2,
    );
    expect(badPort.err()).toContain("--policy-port must be a port number");

    const badFlag = captureIo(dir);
    expect(await main(["control-plane", "--manifests", "manifests", "--bogus"], badFlag)).toBe(2);
    expect(badFlag.err()).toContain("--bogus");

    const badPolicy = captureIo(dir);
    expect(
      await main(["control-plane", "--manifests", "manifests", "--default-policy", "allow"], badPolicy),
    ).toBe(2);
    expect(badPolicy.err()).toContain("--default-policy must be one of");

    const badMode = captureIo(dir);
    expect(
      await main(
        ["control-plane", "--manifests", "manifests", "--outbound-transport-mode", "tunnel"],
        badMode,
      ),
    ).toBe(2);
    expect(badMode.err()).toContain("--outbound-transport-mode must be transport-header or transparent");
    const badInbound = captureIo(dir);
    expect(
      await main(["control-plane", "--manifests", "manifests", "--proxy-inbound-port", "0"], badInbound),
    ).toBe(2);
    expect(badInbound.err()).toContain("--proxy-inbound-port must be a port number 1-65535");

    const badLifetime = captureIo(dir);
    expect(
      await main(["control-plane", "--manifests", "m", "--certificate-lifetime", "soon"], badLifetime),
    ).toBe(2);

    const noPod = captureIo(dir);
    expect(await main(["env"], noPod)).toBe(2);
    expect(noPod.err()).toContain("POD is required");
  });

  it("refuses a manifests folder that does not exist", async () => {
    const io = captureIo(dir);
    expect(await main(["control-plane", "--manifests", "no-such-dir", ...EPHEMERAL], io)).toBe(1);
    expect(io.err()).toBe("inmesh control-plane: --manifests no-such-dir: not a directory\n");
  });

  it("reports a port in use as a one-line error with exit code 1", async () => {
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, "127.0.0.1", resolve));
    const port = (blocker.address() as net.AddressInfo).port;
    const io = captureIo(dir);
    const code = await main(
      [
        "control-plane",
        "--manifests",
        "manifests",
        "--state",
        "state",
        ...EPHEMERAL,
        "--policy-port",
        String(port),
      ],
      io,
    );
    await new Promise<void>((resolve) => blocker.close(() => resolve()));
    expect(code).toBe(1);
    expect(io.err().trim().split("\n")).toHaveLength(1);
    expect(io.err()).toMatch(/EADDRINUSE/);
  });

  it("control-plane serves until SIGTERM, then closes its ports and exits 0", async () => {
    const io = captureIo(dir);
    const exit = main(["control-plane", "--manifests", "manifests", "--state", "state", ...EPHEMERAL], io);
    await eventually(() => io.out().includes("policy "), 20_000, "startup banner");
    expect(io.out()).toContain("use Linkerd in production");
    const policyAddress = /policy\s+(\S+)/.exec(io.out())?.[1] as string;

    const client = new inbound.InboundServerPoliciesClient(policyAddress, credentials.createInsecure());
    const answer = await new Promise<number | undefined>((resolve) =>
      client.getPort({ workload: '{"ns":"default","pod":"x"}', port: 0 }, (error) => resolve(error?.code)),
    );
    client.close();
    expect(answer).toBe(status.INVALID_ARGUMENT);

    io.controller.abort("SIGTERM");
    expect(await exit).toBe(0);
    const [host, port] = [policyAddress.split(":")[0] as string, Number(policyAddress.split(":")[1])];
    const refused = await new Promise<boolean>((resolve) => {
      const socket = net.connect({ host, port });
      socket.once("connect", () => {
        socket.destroy();
        resolve(false);
      });
      socket.once("error", () => resolve(true));
    });
    expect(refused).toBe(true);
  });
});
