import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import AjvModule from "ajv";
import { describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";

// examples/kubernetes against a checked-in schema of the Kubernetes objects they use, then against what
// Linkerd's controllers, linkerd-viz and `linkerd check --proxy` read from an injected pod
// (linkerd-contract.md §2.1, §8.3, §9.7, §10.3; linkerd2 pkg/k8s/labels.go, charts/partials/_proxy.tpl).
const dir = fileURLToPath(new URL("../examples/kubernetes/", import.meta.url));
const schema = JSON.parse(readFileSync(path.join(dir, "schema/kubernetes-objects.schema.json"), "utf8"));

// biome-ignore lint/suspicious/noExplicitAny: parsed YAML is walked field by field, checked as it goes.
type Json = Record<string, any>;
const objects: { file: string; object: Json }[] = readdirSync(dir)
  .filter((name) => name.endsWith(".yaml"))
  .sort()
  .flatMap((file) =>
    parseAllDocuments(readFileSync(path.join(dir, file), "utf8")).map((document) => {
      expect(document.errors, file).toEqual([]);
      return { file, object: document.toJS() as Json };
    }),
  );
const deployments = objects.filter(({ object }) => object.kind === "Deployment");
const namespaceOf = (name: string) =>
  objects.find(({ object }) => object.kind === "Namespace" && object.metadata.name === name)?.object;

/** `netip.ParseAddrPort` as the destination controller parses the proxy's listen addresses. */
function addrPort(value: string): number | undefined {
  const match = /^(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:.]+\]):(\d{1,5})$/.exec(value);
  return match ? Number(match[1]) : undefined;
}

describe("examples/kubernetes", () => {
  it("every object validates against the schema (and the schema rejects what it should)", () => {
    // ajv is CommonJS: under NodeNext its class is the default export's `default`.
    const Ajv = AjvModule.default;
    const ajv = new Ajv({ allErrors: true, strict: true });
    const validate = ajv.compile(schema);
    expect(objects.length).toBeGreaterThanOrEqual(10);
    for (const { file, object } of objects) {
      const valid = validate(object);
      expect(valid ? [] : validate.errors, `${file} ${object.kind}/${object.metadata?.name}`).toEqual([]);
    }
    // The schema is not a rubber stamp: a typo, a bad port and a value+valueFrom pair are refused.
    const books = structuredClone(deployments[0]?.object) as Json;
    books.spec.template.spec.containers[0].readinesProbe =
      books.spec.template.spec.containers[0].readinessProbe;
    expect(validate(books)).toBe(false);
    const badPort = structuredClone(deployments[0]?.object) as Json;
    badPort.spec.template.spec.containers[0].ports[0].containerPort = 70000;
    expect(validate(badPort)).toBe(false);
    const both = structuredClone(deployments[0]?.object) as Json;
    both.spec.template.spec.containers[0].env[0].value = "x";
    expect(validate(both)).toBe(false);
  });

  it("each pod carries what the injector adds and the control plane, viz and linkerd check --proxy read", () => {
    expect(deployments.map(({ object }) => object.metadata.name).sort()).toEqual(["books", "web"]);
    for (const { object: deployment } of deployments) {
      const name = deployment.metadata.name as string;
      const ns = deployment.metadata.namespace as string;
      const template = deployment.spec.template;
      expect(template.metadata.labels, name).toMatchObject({
        "linkerd.io/control-plane-ns": "linkerd",
        "linkerd.io/proxy-deployment": name,
        "linkerd.io/workload-ns": ns,
      });
      expect(template.metadata.annotations, name).toMatchObject({
        "linkerd.io/inject": "disabled",
        "linkerd.io/identity-mode": "default",
        "config.linkerd.io/default-inbound-policy":
          namespaceOf(ns)?.metadata.annotations["config.linkerd.io/default-inbound-policy"],
      });
      for (const key of ["linkerd.io/created-by", "linkerd.io/proxy-version", "linkerd.io/trust-root-sha256"])
        expect(template.metadata.annotations[key], `${name} ${key}`).toMatch(/\S/);

      // The container named linkerd-proxy: its env holds literal ip:port listen addresses.
      const containers = template.spec.containers as Json[];
      const proxy = containers.find((container) => container.name === "linkerd-proxy");
      if (proxy === undefined) throw new Error(`${name} has no container named linkerd-proxy`);
      const env = new Map((proxy.env as Json[]).map((entry) => [entry.name as string, entry]));
      const literal = (variable: string) => {
        const entry = env.get(variable);
        expect(entry?.valueFrom, `${name} ${variable} must be a literal value`).toBeUndefined();
        return entry?.value as string;
      };
      const inbound = addrPort(literal("LINKERD2_PROXY_INBOUND_LISTEN_ADDR"));
      const admin = addrPort(literal("LINKERD2_PROXY_ADMIN_LISTEN_ADDR"));
      expect(addrPort(literal("LINKERD2_PROXY_CONTROL_LISTEN_ADDR")), name).toBeDefined();
      const ports = new Map((proxy.ports as Json[]).map((port) => [port.name as string, port.containerPort]));
      // Named ports: viz scrapes `linkerd-admin`; the inbound port is `linkerd-proxy` as the injector names it.
      expect(ports.get("linkerd-proxy"), name).toBe(inbound);
      expect(ports.get("linkerd-admin"), name).toBe(admin);
      // `linkerd check --proxy` compares this literal bundle with the control plane's.
      expect(literal("LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS"), name).toContain("-----BEGIN CERTIFICATE-----");
      expect(env.get("LINKERD2_PROXY_INBOUND_IPS")?.valueFrom?.fieldRef?.fieldPath, name).toBe(
        "status.podIPs",
      );
      expect(literal("LINKERD2_PROXY_INBOUND_PORTS").split(",").map(Number), name).toContain(
        ports.get("http"),
      );
      for (const variable of [
        "LINKERD2_PROXY_IDENTITY_LOCAL_NAME",
        "LINKERD2_PROXY_IDENTITY_TOKEN_FILE",
        "LINKERD2_PROXY_IDENTITY_SVC_ADDR",
        "LINKERD2_PROXY_IDENTITY_SVC_NAME",
        "LINKERD2_PROXY_DESTINATION_SVC_ADDR",
        "LINKERD2_PROXY_DESTINATION_SVC_NAME",
        "LINKERD2_PROXY_DESTINATION_CONTEXT",
        "LINKERD2_PROXY_POLICY_SVC_ADDR",
        "LINKERD2_PROXY_POLICY_SVC_NAME",
        "LINKERD2_PROXY_POLICY_WORKLOAD",
      ])
        expect(literal(variable), `${name} ${variable}`).toMatch(/\S/);
      // Kubelet probes the admin port by name; the token is for Linkerd's identity service only.
      expect(proxy.readinessProbe.httpGet, name).toEqual({ path: "/ready", port: "linkerd-admin" });
      expect(proxy.livenessProbe.httpGet, name).toEqual({ path: "/live", port: "linkerd-admin" });
      const token = (template.spec.volumes as Json[])
        .flatMap((volume) => volume.projected?.sources ?? [])
        .find((source: Json) => source.serviceAccountToken)?.serviceAccountToken;
      expect(token?.audience, name).toBe("identity.l5d.io");
      expect(
        path.posix.join(
          proxy.volumeMounts.find((mount: Json) => mount.name === "linkerd-identity-token")?.mountPath ?? "",
          token?.path ?? "",
        ),
      ).toBe(literal("LINKERD2_PROXY_IDENTITY_TOKEN_FILE"));
      expect(template.spec.serviceAccountName, name).toBe(name);
    }
  });

  it("Services select the pods and target their named ports", () => {
    for (const { object: service } of objects.filter(({ object }) => object.kind === "Service")) {
      const deployment = deployments.find(
        ({ object }) =>
          object.metadata.namespace === service.metadata.namespace &&
          Object.entries(service.spec.selector).every(
            ([k, v]) => object.spec.template.metadata.labels[k] === v,
          ),
      )?.object;
      if (deployment === undefined) throw new Error(`Service ${service.metadata.name} selects no Deployment`);
      const names = (deployment.spec.template.spec.containers as Json[]).flatMap((container) =>
        (container.ports ?? []).map((port: Json) => port.name),
      );
      for (const port of service.spec.ports) expect(names, service.metadata.name).toContain(port.targetPort);
    }
  });
});
