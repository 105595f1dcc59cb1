import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { expect, it } from "vitest";

// The peer-api check of OpenTelemetry JS: an instrumentation must use the application's copy of
// @opentelemetry/api (two copies would not share the global tracer provider), and must not pull in an SDK.
const root = fileURLToPath(new URL("..", import.meta.url));

it("has @opentelemetry/api as a peer dependency only", () => {
  const manifest = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
  expect(manifest.peerDependencies?.["@opentelemetry/api"]).toBeTruthy();
  expect(manifest.dependencies?.["@opentelemetry/api"]).toBeUndefined();
  const runtime = Object.keys(manifest.dependencies ?? {});
  expect(runtime.filter((name) => name.startsWith("@opentelemetry/"))).toEqual([]);
});

it("imports nothing from OpenTelemetry but the API in its sources", () => {
  const sources = readdirSync(join(root, "src")).filter((file) => file.endsWith(".ts"));
  expect(sources.length).toBeGreaterThan(0);
  for (const file of sources) {
    const text = readFileSync(join(root, "src", file), "utf8");
    const imports = [...text.matchAll(/from\s+["'](@opentelemetry\/[^"']+)["']/g)].map((match) => match[1]);
    expect(
      imports.filter((name) => name !== "@opentelemetry/api"),
      file,
    ).toEqual([]);
  }
});
