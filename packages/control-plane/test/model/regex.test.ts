import { describe, expect, it } from "vitest";
import { buildClusterState, ManifestError, type ManifestFile } from "../../src/model/index.js";
import { rustRegexError } from "../../src/model/resources.js";

/**
 * The dev control plane validates route regexes with the translation and engine its clients match them
 * on (Rust syntax → RE2), so it never serves a pattern the clients would refuse, and never runs one on
 * V8's backtracking engine.
 */
describe("route regex validation", () => {
  it("accepts Rust syntax RE2 reads the same way, including what V8 cannot parse", () => {
    for (const pattern of [
      "/api/v[0-9]+/.*",
      "(?i)/books/\\d+",
      "a(?i)b",
      "[[:alpha:]]+",
      "(?P<id>[0-9]+)",
      "\\Aa\\z",
      "\\p{Greek}+",
      "\\x{1F600}",
    ]) {
      expect(rustRegexError(pattern), pattern).toBeUndefined();
    }
  });

  it("refuses look-around, back-references and constructs RE2 would read differently", () => {
    expect(rustRegexError("(?=a)")).toMatch(/look-ahead/);
    expect(rustRegexError("(a)\\1")).toMatch(/back-references/);
    expect(rustRegexError("[a[bc]]")).toMatch(/nested/);
    expect(rustRegexError("/api/{id}")).toMatch(/literal \{/);
    expect(rustRegexError("(")).toMatch(/missing closing/);
  });

  it("reports a refused HTTPRoute path regex and ServiceProfile pathRegex as manifest problems", () => {
    const file: ManifestFile = {
      path: "regex.yaml",
      text: [
        "apiVersion: gateway.networking.k8s.io/v1",
        "kind: HTTPRoute",
        "metadata: { name: r, namespace: shop }",
        "spec:",
        "  parentRefs: [{ group: policy.linkerd.io, kind: Server, name: web }]",
        "  rules:",
        '    - matches: [{ path: { type: RegularExpression, value: "/(?<=x)y" } }]',
        "---",
        "apiVersion: linkerd.io/v1alpha2",
        "kind: ServiceProfile",
        "metadata: { name: web.shop.svc.cluster.local, namespace: shop }",
        "spec:",
        "  routes:",
        '    - { name: r, condition: { pathRegex: "/a\\\\1" } }',
      ].join("\n"),
    };
    let caught: unknown;
    try {
      buildClusterState([file]);
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(ManifestError);
    const messages = (caught as ManifestError).problems.map((p) => `${p.field}: ${p.message}`);
    expect(messages).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/path\.value: invalid regular expression .*look-behind/),
        expect.stringMatching(/pathRegex: invalid regular expression .*back-references/),
      ]),
    );
  });
});
