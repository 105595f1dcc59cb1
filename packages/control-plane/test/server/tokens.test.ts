import { mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTokenStore } from "../../src/server/tokens.js";

describe("identity token store", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "inmesh-tokens-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("keeps tokens valid across processes sharing a state folder, stored by digest with mode 0600", async () => {
    const issuer = createTokenStore({ stateDir: dir });
    const record = { namespace: "default", pod: "web-1", serviceAccount: "web" };
    const token = await issuer.issue(record);
    expect(token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(await issuer.issue(record)).toBe(token);

    const restarted = createTokenStore({ stateDir: dir });
    expect(await restarted.lookup(Buffer.from(`${token}\n`))).toEqual(record);
    expect(await restarted.lookup(Buffer.from("not-a-token"))).toBeUndefined();
    expect(await restarted.lookup(Buffer.from("../../etc/passwd"))).toBeUndefined();
    expect(await restarted.lookup(Buffer.alloc(10_000, 0x61))).toBeUndefined();

    const files = await readdir(path.join(dir, "tokens"));
    expect(files).toHaveLength(1);
    expect(files[0]).toMatch(/^[0-9a-f]{64}\.json$/);
    expect(files[0]).not.toContain(token);
    expect((await stat(path.join(dir, "tokens", files[0] as string))).mode & 0o777).toBe(0o600);
  });

  it("without a state folder, knows only the tokens it issued", async () => {
    const store = createTokenStore();
    const token = await store.issue({ namespace: "default", pod: "a", serviceAccount: "a" });
    expect(await store.lookup(Buffer.from(token))).toEqual({
      namespace: "default",
      pod: "a",
      serviceAccount: "a",
    });
    expect(await createTokenStore().lookup(Buffer.from(token))).toBeUndefined();
  });
});
