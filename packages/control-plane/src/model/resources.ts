/**
 * Typed, validated forms of the Kubernetes resources the model understands, and their parsers.
 * Parsers never throw: every problem goes to the Reader (file, document, field) and parsing goes on,
 * so one run reports everything wrong with the manifests.
 */
import {
  type Cidr,
  cidrContains,
  formatIpAddress,
  isDnsName,
  parseCidr,
  parseIpAddress,
  translateRustRegex,
} from "@inmesh/core";
import { type grpcRoute, type httpRoute, httpTypes } from "@inmesh/proto";
import { RE2JS } from "re2js";
import { parseGatewayDurationMs } from "./durations.js";
import { type DefaultPolicyName, isDefaultPolicyName } from "./options.js";
import {
  isDnsLabel,
  isDnsSubdomain,
  isPortName,
  type JsonObject,
  joinField,
  type Reader,
  type Source,
} from "./reader.js";

export interface Meta {
  readonly name: string;
  /** "" for cluster-scoped resources (Namespace). */
  readonly namespace: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly annotations: Readonly<Record<string, string>>;
  readonly creationTimestampMs: number | undefined;
  readonly source: Source;
}

export function parseMeta(r: Reader, doc: JsonObject, namespaced: boolean): Meta | undefined {
  const metadata = r.object(doc, "metadata", "metadata", true);
  if (!metadata) return undefined;
  const name = r.string(metadata, "name", "metadata.name", true);
  if (name !== undefined) {
    r.name = name;
    const valid = namespaced ? isDnsSubdomain(name) : isDnsLabel(name);
    if (!valid) r.fail("metadata.name", `${JSON.stringify(name)} is not a valid name (lower-case RFC 1123)`);
  }
  let namespace = "";
  if (namespaced) {
    namespace = r.string(metadata, "namespace", "metadata.namespace") ?? "default";
    if (!isDnsLabel(namespace))
      r.fail("metadata.namespace", `${JSON.stringify(namespace)} is not a valid namespace name`);
  } else if (r.raw(metadata, "namespace") !== undefined) {
    r.fail("metadata.namespace", `${r.kind} is cluster-scoped and takes no namespace`);
  }
  const labels = r.stringMap(metadata, "labels", "metadata.labels");
  const annotations = r.stringMap(metadata, "annotations", "metadata.annotations");
  let creationTimestampMs: number | undefined;
  const created = r.string(metadata, "creationTimestamp", "metadata.creationTimestamp");
  if (created !== undefined) {
    creationTimestampMs = Date.parse(created);
    if (Number.isNaN(creationTimestampMs)) {
      creationTimestampMs = undefined;
      r.fail("metadata.creationTimestamp", `${JSON.stringify(created)} is not an RFC 3339 timestamp`);
    }
  }
  if (name === undefined) return undefined;
  return { name, namespace, labels, annotations, creationTimestampMs, source: r.source };
}

// ---------------------------------------------------------------------------------------------
// Label selectors

export interface LabelSelector {
  readonly matchLabels: Readonly<Record<string, string>>;
  readonly matchExpressions: ReadonlyArray<{
    key: string;
    operator: "In" | "NotIn" | "Exists" | "DoesNotExist";
    values: readonly string[];
  }>;
}

export function parseLabelSelector(r: Reader, obj: JsonObject, field: string): LabelSelector {
  const matchLabels = r.stringMap(obj, "matchLabels", joinField(field, "matchLabels"));
  const matchExpressions: Array<LabelSelector["matchExpressions"][number]> = [];
  for (const [expr, exprField] of r.objects(obj, "matchExpressions", joinField(field, "matchExpressions"))) {
    const key = r.string(expr, "key", joinField(exprField, "key"), true);
    const operator = r.string(expr, "operator", joinField(exprField, "operator"), true);
    const values = r.strings(expr, "values", joinField(exprField, "values")) ?? [];
    if (key === undefined || operator === undefined) continue;
    if (operator === "In" || operator === "NotIn") {
      if (values.length === 0)
        r.fail(joinField(exprField, "values"), `must not be empty for operator ${operator}`);
    } else if (operator === "Exists" || operator === "DoesNotExist") {
      if (values.length > 0) r.fail(joinField(exprField, "values"), `must be empty for operator ${operator}`);
    } else {
      r.fail(
        joinField(exprField, "operator"),
        `must be In, NotIn, Exists or DoesNotExist, got ${JSON.stringify(operator)}`,
      );
      continue;
    }
    matchExpressions.push({ key, operator, values });
  }
  return { matchLabels, matchExpressions };
}

export function selectorMatches(selector: LabelSelector, labels: Readonly<Record<string, string>>): boolean {
  for (const [key, value] of Object.entries(selector.matchLabels)) {
    if (labels[key] !== value) return false;
  }
  for (const expr of selector.matchExpressions) {
    const has = Object.hasOwn(labels, expr.key);
    const value = labels[expr.key];
    switch (expr.operator) {
      case "In":
        if (!has || !expr.values.includes(value as string)) return false;
        break;
      case "NotIn":
        if (has && expr.values.includes(value as string)) return false;
        break;
      case "Exists":
        if (!has) return false;
        break;
      case "DoesNotExist":
        if (has) return false;
        break;
    }
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Core kinds

export type PortProtocol = "TCP" | "UDP" | "SCTP";

function parseProtocol(r: Reader, obj: JsonObject, field: string): PortProtocol {
  const protocol = r.string(obj, "protocol", field) ?? "TCP";
  if (protocol === "TCP" || protocol === "UDP" || protocol === "SCTP") return protocol;
  r.fail(field, `must be TCP, UDP or SCTP, got ${JSON.stringify(protocol)}`);
  return "TCP";
}

export interface ContainerRes {
  readonly name: string;
  readonly ports: ReadonlyArray<{ containerPort: number; name: string | undefined; protocol: PortProtocol }>;
  /** httpGet probes: port (number or name in this container) and path (query dropped). */
  readonly probes: ReadonlyArray<{ port: number | string; path: string }>;
  readonly env: ReadonlyArray<{ name: string; value: string | undefined }>;
}

export interface PodRes {
  readonly meta: Meta;
  readonly serviceAccount: string;
  readonly ip: string;
  readonly ipFamily: 4 | 6;
  readonly containers: readonly ContainerRes[];
  readonly initContainers: readonly ContainerRes[];
  readonly hostname: string | undefined;
  readonly subdomain: string | undefined;
  readonly phase: string | undefined;
  readonly terminating: boolean;
  /** False when `status.conditions` says Ready=False (Kubernetes lists such pods as not-ready addresses). */
  readonly ready: boolean;
  readonly owner: { kind: string; name: string } | undefined;
}

function parseContainer(r: Reader, obj: JsonObject, field: string, index: number): ContainerRes {
  const name = r.string(obj, "name", joinField(field, "name")) ?? `container-${index}`;
  const ports: Array<ContainerRes["ports"][number]> = [];
  for (const [port, portField] of r.objects(obj, "ports", joinField(field, "ports"))) {
    const containerPort = r.integer(
      port,
      "containerPort",
      joinField(portField, "containerPort"),
      1,
      65535,
      true,
    );
    const portName = r.string(port, "name", joinField(portField, "name"));
    if (portName !== undefined && !isPortName(portName)) {
      r.fail(joinField(portField, "name"), `${JSON.stringify(portName)} is not a valid port name`);
    }
    const protocol = parseProtocol(r, port, joinField(portField, "protocol"));
    if (containerPort !== undefined) ports.push({ containerPort, name: portName, protocol });
  }
  const probes: Array<ContainerRes["probes"][number]> = [];
  for (const probeKey of ["livenessProbe", "readinessProbe", "startupProbe"]) {
    const probe = r.object(obj, probeKey, joinField(field, probeKey));
    if (!probe) continue;
    const httpGet = r.object(probe, "httpGet", joinField(joinField(field, probeKey), "httpGet"));
    if (!httpGet) continue;
    const httpField = joinField(joinField(field, probeKey), "httpGet");
    const port = r.portOrName(httpGet, "port", joinField(httpField, "port"), true);
    const rawPath = r.string(httpGet, "path", joinField(httpField, "path")) ?? "/";
    // Only the URI path is kept: kubelet's query string never reaches route matching.
    const path = rawPath.split("?")[0] || "/";
    if (port !== undefined) probes.push({ port, path: path.startsWith("/") ? path : `/${path}` });
  }
  const env: Array<ContainerRes["env"][number]> = [];
  for (const [variable, envField] of r.objects(obj, "env", joinField(field, "env"))) {
    const envName = r.string(variable, "name", joinField(envField, "name"), true);
    const value = r.string(variable, "value", joinField(envField, "value"));
    if (envName !== undefined) env.push({ name: envName, value });
  }
  return { name, ports, probes, env };
}

export function parsePod(r: Reader, doc: JsonObject): PodRes | undefined {
  const meta = parseMeta(r, doc, true);
  const spec = r.object(doc, "spec", "spec") ?? {};
  const status = r.object(doc, "status", "status") ?? {};
  const serviceAccount =
    r.string(spec, "serviceAccountName", "spec.serviceAccountName") ??
    r.string(spec, "serviceAccount", "spec.serviceAccount");
  if (serviceAccount !== undefined && !isDnsSubdomain(serviceAccount)) {
    r.fail(
      "spec.serviceAccountName",
      `${JSON.stringify(serviceAccount)} is not a valid service account name`,
    );
  }
  const containers = r
    .objects(spec, "containers", "spec.containers")
    .map(([c, f], i) => parseContainer(r, c, f, i));
  const initContainers = r
    .objects(spec, "initContainers", "spec.initContainers")
    .map(([c, f], i) => parseContainer(r, c, f, i));
  let ip = r.string(status, "podIP", "status.podIP");
  if (ip === undefined) {
    const first = r.objects(status, "podIPs", "status.podIPs")[0];
    if (first) ip = r.string(first[0], "ip", joinField(first[1], "ip"));
  }
  ip ??= "127.0.0.1";
  let ipFamily: 4 | 6 = 4;
  const parsedIp = parseIpAddress(ip);
  if (parsedIp) {
    ipFamily = parsedIp.family;
    ip = formatIpAddress(parsedIp.family, parsedIp.value);
  } else {
    r.fail("status.podIP", `${JSON.stringify(ip)} is not an IP address`);
  }
  const hostname = r.string(spec, "hostname", "spec.hostname");
  const subdomain = r.string(spec, "subdomain", "spec.subdomain");
  const phase = r.string(status, "phase", "status.phase");
  const metadata = r.object(doc, "metadata", "metadata") ?? {};
  const terminating = r.raw(metadata, "deletionTimestamp") !== undefined;
  let ready = true;
  for (const [condition, conditionField] of r.objects(status, "conditions", "status.conditions")) {
    if (r.string(condition, "type", joinField(conditionField, "type")) !== "Ready") continue;
    if (r.string(condition, "status", joinField(conditionField, "status")) === "False") ready = false;
  }
  let owner: PodRes["owner"];
  for (const [ref, refField] of r.objects(metadata, "ownerReferences", "metadata.ownerReferences")) {
    const kind = r.string(ref, "kind", joinField(refField, "kind"));
    const name = r.string(ref, "name", joinField(refField, "name"));
    if (
      kind !== undefined &&
      name !== undefined &&
      (r.raw(ref, "controller") === true || owner === undefined)
    ) {
      owner = { kind, name };
    }
  }
  if (!meta) return undefined;
  return {
    meta,
    serviceAccount: serviceAccount ?? "default",
    ip,
    ipFamily,
    containers,
    initContainers,
    hostname,
    subdomain,
    phase,
    terminating,
    ready,
    owner,
  };
}

export interface ServicePortRes {
  readonly name: string | undefined;
  readonly port: number;
  readonly targetPort: number | string;
  readonly protocol: PortProtocol;
}

export interface ServiceRes {
  readonly meta: Meta;
  readonly selector: Readonly<Record<string, string>> | undefined;
  readonly ports: readonly ServicePortRes[];
  /** Declared, or assigned by the dev control plane when the manifest leaves it out. */
  readonly clusterIPs: readonly string[];
  /** `clusterIP: None`. */
  readonly headless: boolean;
  readonly type: string;
}

export function parseService(r: Reader, doc: JsonObject): ServiceRes | undefined {
  const meta = parseMeta(r, doc, true);
  const spec = r.object(doc, "spec", "spec") ?? {};
  const selector =
    r.raw(spec, "selector") === undefined ? undefined : r.stringMap(spec, "selector", "spec.selector");
  const ports: ServicePortRes[] = [];
  const seen = new Set<string>();
  for (const [port, portField] of r.objects(spec, "ports", "spec.ports")) {
    const name = r.string(port, "name", joinField(portField, "name"));
    if (name !== undefined && name !== "" && !isPortName(name)) {
      r.fail(joinField(portField, "name"), `${JSON.stringify(name)} is not a valid port name`);
    }
    const number = r.integer(port, "port", joinField(portField, "port"), 1, 65535, true);
    const targetPort = r.portOrName(port, "targetPort", joinField(portField, "targetPort"));
    const protocol = parseProtocol(r, port, joinField(portField, "protocol"));
    if (number === undefined) continue;
    const key = `${protocol}/${number}`;
    if (seen.has(key)) r.fail(joinField(portField, "port"), `duplicate port ${number}/${protocol}`);
    seen.add(key);
    ports.push({
      name: name === "" ? undefined : name,
      port: number,
      targetPort: targetPort ?? number,
      protocol,
    });
  }
  const clusterIPs: string[] = [];
  const clusterIP = r.string(spec, "clusterIP", "spec.clusterIP");
  for (const ip of [
    ...(clusterIP === undefined ? [] : [clusterIP]),
    ...(r.strings(spec, "clusterIPs", "spec.clusterIPs") ?? []),
  ]) {
    if (ip === "" || ip === "None") continue;
    const parsed = parseIpAddress(ip);
    if (!parsed) {
      r.fail("spec.clusterIP", `${JSON.stringify(ip)} is not an IP address`);
      continue;
    }
    const canonical = formatIpAddress(parsed.family, parsed.value);
    if (!clusterIPs.includes(canonical)) clusterIPs.push(canonical);
  }
  const type = r.string(spec, "type", "spec.type") ?? "ClusterIP";
  if (!["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].includes(type)) {
    r.fail(
      "spec.type",
      `must be ClusterIP, NodePort, LoadBalancer or ExternalName, got ${JSON.stringify(type)}`,
    );
  }
  if (!meta) return undefined;
  return { meta, selector, ports, clusterIPs, headless: clusterIP === "None", type };
}

export interface NamespaceRes {
  readonly meta: Meta;
}

export function parseNamespace(r: Reader, doc: JsonObject): NamespaceRes | undefined {
  const meta = parseMeta(r, doc, false);
  return meta ? { meta } : undefined;
}

export interface ServiceAccountRes {
  readonly meta: Meta;
}

export function parseServiceAccount(r: Reader, doc: JsonObject): ServiceAccountRes | undefined {
  const meta = parseMeta(r, doc, true);
  return meta ? { meta } : undefined;
}

// ---------------------------------------------------------------------------------------------
// Networks and identities

export interface NetworkSpec {
  readonly net: string;
  readonly except: readonly string[];
}

function cidrCovers(outer: Cidr, inner: Cidr): boolean {
  return outer.prefixLength <= inner.prefixLength && cidrContains(outer, inner.family, inner.address);
}

/** `{cidr, except[]}`; a bare IP is a /32 or /128. Admission rules: every except inside, never all of it. */
export function parseNetworks(r: Reader, obj: JsonObject, key: string, field: string): NetworkSpec[] {
  const result: NetworkSpec[] = [];
  for (const [network, netField] of r.objects(obj, key, field)) {
    const cidrText = r.string(network, "cidr", joinField(netField, "cidr"), true);
    const exceptTexts = r.strings(network, "except", joinField(netField, "except")) ?? [];
    if (cidrText === undefined) continue;
    let cidr: Cidr;
    try {
      cidr = parseCidr(cidrText);
    } catch (error) {
      r.fail(joinField(netField, "cidr"), (error as Error).message);
      continue;
    }
    const except: string[] = [];
    exceptTexts.forEach((text, index) => {
      const exceptField = joinField(joinField(netField, "except"), index);
      try {
        const inner = parseCidr(text);
        if (inner.family !== cidr.family || !cidrCovers(cidr, inner)) {
          r.fail(exceptField, `${text} is not inside ${cidrText}`);
        } else if (cidrCovers(inner, cidr)) {
          r.fail(exceptField, `${text} excludes all of ${cidrText}`);
        } else {
          except.push(normalizeNetwork(text, inner));
        }
      } catch (error) {
        r.fail(exceptField, (error as Error).message);
      }
    });
    result.push({ net: normalizeNetwork(cidrText, cidr), except });
  }
  return result;
}

function normalizeNetwork(text: string, cidr: Cidr): string {
  const trimmed = text.trim();
  return trimmed.includes("/") ? trimmed : `${trimmed}/${cidr.prefixLength}`;
}

/** One element of an identity list: exact name, or a suffix given as its labels (`[]` = every identity). */
export type IdentityMatch = { readonly exact: string } | { readonly suffix: readonly string[] };

const SPIFFE = /^spiffe:\/\/[a-z0-9.-]+(\/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*$/;

/**
 * policy-semantics.md §5.4: `*` → every identity, `*.a.b` → suffix [a, b], anything else is exact and
 * must be a DNS-like name or a SPIFFE URI (admission `validation.rs`).
 */
export function parseIdentity(r: Reader, text: string, field: string): IdentityMatch | undefined {
  if (text === "*") return { suffix: [] };
  if (text.startsWith("*.")) {
    const rest = text.slice(2);
    if (!isDnsName(rest)) return r.fail(field, `${JSON.stringify(text)} is not a valid identity suffix`);
    return { suffix: rest.split(".") };
  }
  if (isDnsName(text) || SPIFFE.test(text)) return { exact: text };
  return r.fail(
    field,
    `${JSON.stringify(text)} is not a valid identity (lower-case DNS-like name or spiffe:// URI)`,
  );
}

// ---------------------------------------------------------------------------------------------
// policy.linkerd.io

export type ServerProtocol = "detect" | "http1" | "http2" | "grpc" | "opaque" | "tls";

const PROXY_PROTOCOLS: Readonly<Record<string, ServerProtocol>> = {
  unknown: "detect",
  "HTTP/1": "http1",
  "HTTP/2": "http2",
  gRPC: "grpc",
  opaque: "opaque",
  TLS: "tls",
};

export interface ServerRes {
  readonly meta: Meta;
  /** undefined when the Server uses `externalWorkloadSelector` (selects no pod here). */
  readonly podSelector: LabelSelector | undefined;
  readonly port: number | string;
  readonly protocol: ServerProtocol;
  readonly accessPolicy: DefaultPolicyName | undefined;
}

export function parseServer(r: Reader, doc: JsonObject): ServerRes | undefined {
  const meta = parseMeta(r, doc, true);
  const spec = r.object(doc, "spec", "spec", true) ?? {};
  const podSelectorObj = r.object(spec, "podSelector", "spec.podSelector");
  const externalSelector = r.object(spec, "externalWorkloadSelector", "spec.externalWorkloadSelector");
  if (podSelectorObj && externalSelector) {
    r.fail("spec", "podSelector and externalWorkloadSelector are mutually exclusive");
  } else if (!podSelectorObj && !externalSelector) {
    r.fail("spec.podSelector", "is required (or externalWorkloadSelector)");
  } else if (externalSelector) {
    r.warn(
      "spec.externalWorkloadSelector",
      "the dev control plane has no ExternalWorkloads; this Server selects nothing",
    );
  }
  const podSelector = podSelectorObj ? parseLabelSelector(r, podSelectorObj, "spec.podSelector") : undefined;
  const port = r.portOrName(spec, "port", "spec.port", true);
  const protocolText = r.string(spec, "proxyProtocol", "spec.proxyProtocol") ?? "unknown";
  const protocol = PROXY_PROTOCOLS[protocolText];
  if (protocol === undefined) {
    r.fail(
      "spec.proxyProtocol",
      `must be one of ${Object.keys(PROXY_PROTOCOLS).join(", ")}, got ${JSON.stringify(protocolText)}`,
    );
  }
  const accessText = r.string(spec, "accessPolicy", "spec.accessPolicy");
  let accessPolicy: DefaultPolicyName | undefined;
  if (accessText !== undefined) {
    if (isDefaultPolicyName(accessText)) accessPolicy = accessText;
    else r.fail("spec.accessPolicy", `${JSON.stringify(accessText)} is not a default policy name`);
  }
  if (!meta || port === undefined) return undefined;
  return { meta, podSelector, port, protocol: protocol ?? "detect", accessPolicy };
}

export type ClientAuthn =
  | { readonly kind: "unauthenticated" }
  | { readonly kind: "tls-unauthenticated" }
  | { readonly kind: "identities"; readonly identities: readonly IdentityMatch[] };

export interface ServerAuthorizationRes {
  readonly meta: Meta;
  readonly serverName: string | undefined;
  readonly serverSelector: LabelSelector | undefined;
  /** Empty = the cluster networks (policy-semantics.md §5.1). */
  readonly networks: readonly NetworkSpec[];
  readonly authn: ClientAuthn;
  /** Unresolved service accounts (the identity needs the cluster options). */
  readonly serviceAccounts: ReadonlyArray<{ name: string; namespace: string }>;
}

export function parseServerAuthorization(r: Reader, doc: JsonObject): ServerAuthorizationRes | undefined {
  const meta = parseMeta(r, doc, true);
  const spec = r.object(doc, "spec", "spec", true) ?? {};
  const server = r.object(spec, "server", "spec.server", true) ?? {};
  const serverName = r.string(server, "name", "spec.server.name");
  const selectorObj = r.object(server, "selector", "spec.server.selector");
  if ((serverName === undefined) === (selectorObj === undefined) && r.raw(spec, "server") !== undefined) {
    r.fail("spec.server", "needs exactly one of name or selector");
  }
  const serverSelector = selectorObj ? parseLabelSelector(r, selectorObj, "spec.server.selector") : undefined;
  const client = r.object(spec, "client", "spec.client", true) ?? {};
  const networks = parseNetworks(r, client, "networks", "spec.client.networks");
  const unauthenticated = r.boolean(client, "unauthenticated", "spec.client.unauthenticated") === true;
  const meshTLS = r.object(client, "meshTLS", "spec.client.meshTLS");
  let authn: ClientAuthn | undefined;
  const serviceAccounts: Array<{ name: string; namespace: string }> = [];
  if (unauthenticated) {
    if (meshTLS) r.fail("spec.client.meshTLS", "must not be set together with unauthenticated: true");
    authn = { kind: "unauthenticated" };
  } else if (meshTLS) {
    const unauthenticatedTLS =
      r.boolean(meshTLS, "unauthenticatedTLS", "spec.client.meshTLS.unauthenticatedTLS") === true;
    const identityTexts = r.strings(meshTLS, "identities", "spec.client.meshTLS.identities") ?? [];
    const accounts = r.objects(meshTLS, "serviceAccounts", "spec.client.meshTLS.serviceAccounts");
    if (unauthenticatedTLS) {
      if (identityTexts.length > 0 || accounts.length > 0) {
        r.fail(
          "spec.client.meshTLS",
          "unauthenticatedTLS must not be combined with identities or serviceAccounts",
        );
      }
      authn = { kind: "tls-unauthenticated" };
    } else {
      const identities: IdentityMatch[] = [];
      identityTexts.forEach((text, index) => {
        const id = parseIdentity(r, text, joinField("spec.client.meshTLS.identities", index));
        if (id) identities.push(id);
      });
      for (const [account, accountField] of accounts) {
        const name = r.string(account, "name", joinField(accountField, "name"), true);
        const namespace =
          r.string(account, "namespace", joinField(accountField, "namespace")) ??
          meta?.namespace ??
          "default";
        if (name !== undefined) serviceAccounts.push({ name, namespace });
      }
      if (identityTexts.length === 0 && accounts.length === 0) {
        r.fail("spec.client.meshTLS", "needs identities, serviceAccounts or unauthenticatedTLS: true");
      }
      authn = { kind: "identities", identities };
    }
  } else if (r.raw(spec, "client") !== undefined) {
    r.fail("spec.client", "needs unauthenticated: true or meshTLS");
  }
  if (!meta || !authn) return undefined;
  return { meta, serverName, serverSelector, networks, authn, serviceAccounts };
}

export interface TargetRef {
  readonly group: string;
  readonly kind: string;
  readonly name: string;
  readonly namespace: string | undefined;
}

function parseRef(r: Reader, obj: JsonObject, field: string): TargetRef | undefined {
  const group = r.string(obj, "group", joinField(field, "group")) ?? "";
  const kind = r.string(obj, "kind", joinField(field, "kind"), true);
  const name = r.string(obj, "name", joinField(field, "name"), true);
  const namespace = r.string(obj, "namespace", joinField(field, "namespace"));
  if (kind === undefined || name === undefined) return undefined;
  return { group, kind, name, namespace };
}

/** Missing or empty group means core (policy-semantics.md §5.2); groups compare case-insensitively. */
export function isGroup(ref: { group: string }, group: string): boolean {
  const actual = ref.group.toLowerCase();
  if (group === "core") return actual === "" || actual === "core";
  return actual === group;
}

export type AuthzTarget =
  | { readonly kind: "server"; readonly name: string }
  | { readonly kind: "namespace"; readonly name: string }
  | { readonly kind: "httproute"; readonly group: string; readonly name: string }
  | { readonly kind: "grpcroute"; readonly group: string; readonly name: string };

export interface AuthorizationPolicyRes {
  readonly meta: Meta;
  readonly target: AuthzTarget;
  readonly meshTLS: { name: string; namespace: string } | undefined;
  readonly serviceAccount: { name: string; namespace: string } | undefined;
  readonly network: { name: string; namespace: string } | undefined;
  /** Field path of each reference, for dangling-reference problems. */
  readonly refFields: Readonly<Record<"meshTLS" | "network" | "target", string>>;
}

export function parseAuthorizationPolicy(r: Reader, doc: JsonObject): AuthorizationPolicyRes | undefined {
  const meta = parseMeta(r, doc, true);
  const namespace = meta?.namespace ?? "default";
  const spec = r.object(doc, "spec", "spec", true) ?? {};
  const targetObj = r.object(spec, "targetRef", "spec.targetRef", true);
  const targetRef = targetObj ? parseRef(r, targetObj, "spec.targetRef") : undefined;
  let target: AuthzTarget | undefined;
  if (targetRef) {
    const kind = targetRef.kind.toLowerCase();
    if (kind === "server" && isGroup(targetRef, "policy.linkerd.io")) {
      target = { kind: "server", name: targetRef.name };
    } else if (kind === "namespace" && isGroup(targetRef, "core")) {
      if (targetRef.name !== namespace) {
        r.fail(
          "spec.targetRef.name",
          `a Namespace target must be the policy's own namespace ${JSON.stringify(namespace)}`,
        );
      }
      target = { kind: "namespace", name: targetRef.name };
    } else if (
      kind === "httproute" &&
      (isGroup(targetRef, "policy.linkerd.io") || isGroup(targetRef, "gateway.networking.k8s.io"))
    ) {
      target = { kind: "httproute", group: targetRef.group.toLowerCase(), name: targetRef.name };
    } else if (kind === "grpcroute" && isGroup(targetRef, "gateway.networking.k8s.io")) {
      target = { kind: "grpcroute", group: targetRef.group.toLowerCase(), name: targetRef.name };
    } else {
      r.fail(
        "spec.targetRef",
        `unsupported target ${targetRef.group || "core"}/${targetRef.kind}: use policy.linkerd.io Server, core Namespace, an HTTPRoute or a gateway.networking.k8s.io GRPCRoute`,
      );
    }
    if (targetRef.namespace !== undefined && targetRef.namespace !== namespace) {
      r.fail("spec.targetRef.namespace", "a target must be in the policy's own namespace");
    }
  }
  let meshTLS: AuthorizationPolicyRes["meshTLS"];
  let serviceAccount: AuthorizationPolicyRes["serviceAccount"];
  let network: AuthorizationPolicyRes["network"];
  const refFields = { meshTLS: "", network: "", target: "spec.targetRef" };
  for (const [refObj, refField] of r.objects(
    spec,
    "requiredAuthenticationRefs",
    "spec.requiredAuthenticationRefs",
  )) {
    const ref = parseRef(r, refObj, refField);
    if (!ref) continue;
    const kind = ref.kind.toLowerCase();
    const resolved = { name: ref.name, namespace: ref.namespace ?? namespace };
    if (kind === "meshtlsauthentication" && isGroup(ref, "policy.linkerd.io")) {
      if (meshTLS || serviceAccount)
        r.fail(refField, "at most one identity source (MeshTLSAuthentication or ServiceAccount)");
      meshTLS = resolved;
      refFields.meshTLS = refField;
    } else if (kind === "serviceaccount" && isGroup(ref, "core")) {
      if (meshTLS || serviceAccount)
        r.fail(refField, "at most one identity source (MeshTLSAuthentication or ServiceAccount)");
      serviceAccount = resolved;
    } else if (kind === "networkauthentication" && isGroup(ref, "policy.linkerd.io")) {
      if (network) r.fail(refField, "at most one NetworkAuthentication");
      network = resolved;
      refFields.network = refField;
    } else {
      r.fail(
        refField,
        `unsupported authentication ${ref.group || "core"}/${ref.kind}: use MeshTLSAuthentication, NetworkAuthentication or ServiceAccount`,
      );
    }
  }
  if (!meta || !target) return undefined;
  return { meta, target, meshTLS, serviceAccount, network, refFields };
}

export type IdentityRef =
  | { kind: "serviceaccount"; name: string; namespace: string }
  | { kind: "namespace"; name: string };

export interface MeshTLSAuthenticationRes {
  readonly meta: Meta;
  readonly identities: readonly IdentityMatch[];
  readonly refs: readonly IdentityRef[];
}

export function parseMeshTLSAuthentication(r: Reader, doc: JsonObject): MeshTLSAuthenticationRes | undefined {
  const meta = parseMeta(r, doc, true);
  const spec = r.object(doc, "spec", "spec", true) ?? {};
  const identities: IdentityMatch[] = [];
  const texts = r.strings(spec, "identities", "spec.identities") ?? [];
  texts.forEach((text, index) => {
    const id = parseIdentity(r, text, joinField("spec.identities", index));
    if (id) identities.push(id);
  });
  const refs: IdentityRef[] = [];
  for (const [refObj, refField] of r.objects(spec, "identityRefs", "spec.identityRefs")) {
    const ref = parseRef(r, refObj, refField);
    if (!ref) continue;
    const kind = ref.kind.toLowerCase();
    if (kind === "serviceaccount" && isGroup(ref, "core")) {
      refs.push({
        kind: "serviceaccount",
        name: ref.name,
        namespace: ref.namespace ?? meta?.namespace ?? "default",
      });
    } else if (kind === "namespace" && isGroup(ref, "core")) {
      if (!isDnsLabel(ref.name))
        r.fail(joinField(refField, "name"), `${JSON.stringify(ref.name)} is not a namespace name`);
      else refs.push({ kind: "namespace", name: ref.name });
    } else {
      r.fail(
        refField,
        `unsupported identity reference ${ref.group || "core"}/${ref.kind}: use ServiceAccount or Namespace`,
      );
    }
  }
  if (texts.length === 0 && (r.array(spec, "identityRefs", "spec.identityRefs")?.length ?? 0) === 0) {
    r.fail("spec", "needs at least one of identities or identityRefs");
  }
  if (!meta) return undefined;
  return { meta, identities, refs };
}

export interface NetworkAuthenticationRes {
  readonly meta: Meta;
  readonly networks: readonly NetworkSpec[];
}

export function parseNetworkAuthentication(r: Reader, doc: JsonObject): NetworkAuthenticationRes | undefined {
  const meta = parseMeta(r, doc, true);
  const spec = r.object(doc, "spec", "spec", true) ?? {};
  const networks = parseNetworks(r, spec, "networks", "spec.networks");
  const list = r.array(spec, "networks", "spec.networks");
  if (list === undefined || list.length === 0) r.fail("spec.networks", "needs at least one network");
  if (!meta) return undefined;
  return { meta, networks };
}

// ---------------------------------------------------------------------------------------------
// Routes

export interface ParentRef {
  readonly group: string;
  readonly kind: string;
  readonly name: string;
  readonly namespace: string;
  readonly port: number | undefined;
  readonly sectionName: string | undefined;
  readonly field: string;
}

export interface BackendRef {
  readonly name: string;
  readonly namespace: string;
  readonly port: number;
  readonly weight: number;
  readonly filters: readonly RouteFilter[];
  readonly field: string;
}

export type RouteFilter =
  | { readonly kind: "requestHeaderModifier"; readonly value: httpRoute.RequestHeaderModifier }
  | { readonly kind: "responseHeaderModifier"; readonly value: httpRoute.ResponseHeaderModifier }
  | { readonly kind: "redirect"; readonly value: httpRoute.RequestRedirect };

export interface HttpRuleRes {
  readonly matches: readonly httpRoute.HttpRouteMatch[];
  readonly filters: readonly RouteFilter[];
  readonly backendRefs: readonly BackendRef[];
  /** policy.linkerd.io rules only (`timeouts.request`; zero = none, GEP-1742). */
  readonly requestTimeoutMs: number | undefined;
}

export interface GrpcRuleRes {
  readonly matches: readonly grpcRoute.GrpcRouteMatch[];
  readonly filters: readonly RouteFilter[];
  readonly backendRefs: readonly BackendRef[];
}

export interface RouteRes<Rule> {
  readonly meta: Meta;
  /** `policy.linkerd.io` or `gateway.networking.k8s.io`. */
  readonly group: string;
  readonly kind: "HTTPRoute" | "GRPCRoute";
  readonly parentRefs: readonly ParentRef[];
  readonly hostnames: readonly httpRoute.HostMatch[];
  readonly rules: readonly Rule[];
}

export type HttpRouteRes = RouteRes<HttpRuleRes>;
export type GrpcRouteRes = RouteRes<GrpcRuleRes>;

const METHODS: Readonly<Record<string, httpTypes.HttpMethod_Registered>> = {
  GET: httpTypes.HttpMethod_Registered.GET,
  POST: httpTypes.HttpMethod_Registered.POST,
  PUT: httpTypes.HttpMethod_Registered.PUT,
  DELETE: httpTypes.HttpMethod_Registered.DELETE,
  PATCH: httpTypes.HttpMethod_Registered.PATCH,
  OPTIONS: httpTypes.HttpMethod_Registered.OPTIONS,
  CONNECT: httpTypes.HttpMethod_Registered.CONNECT,
  HEAD: httpTypes.HttpMethod_Registered.HEAD,
  TRACE: httpTypes.HttpMethod_Registered.TRACE,
};

export function registeredMethod(method: string): httpTypes.HttpMethod | undefined {
  const registered = METHODS[method];
  return registered === undefined ? undefined : { type: { $case: "registered", value: registered } };
}

/**
 * Why a route regex would be refused, or undefined. The proxy compiles Rust regexes and inmesh matches
 * them on RE2 after `translateRustRegex`; validating with the same translation and engine means the dev
 * control plane never serves a pattern its clients refuse (look-around, back-references, …), and never
 * compiles one on V8's backtracking engine.
 */
export function rustRegexError(pattern: string): string | undefined {
  const translated = translateRustRegex(pattern);
  if (!translated.ok) return translated.error;
  try {
    RE2JS.compile(translated.source);
    return undefined;
  } catch (error) {
    return (error as Error).message;
  }
}

function checkRegex(r: Reader, pattern: string, field: string): boolean {
  const error = rustRegexError(pattern);
  if (error === undefined) return true;
  r.fail(field, `invalid regular expression ${JSON.stringify(pattern)}: ${error}`);
  return false;
}

const HEADER_NAME = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/;

function parseHeaderMatches(r: Reader, obj: JsonObject, field: string): httpRoute.HeaderMatch[] {
  const result: httpRoute.HeaderMatch[] = [];
  for (const [header, headerField] of r.objects(obj, "headers", field)) {
    const name = r.string(header, "name", joinField(headerField, "name"), true);
    const type = r.string(header, "type", joinField(headerField, "type")) ?? "Exact";
    const value = r.string(header, "value", joinField(headerField, "value"), true);
    if (name !== undefined && !HEADER_NAME.test(name))
      r.fail(joinField(headerField, "name"), `${JSON.stringify(name)} is not a valid header name`);
    if (name === undefined || value === undefined) continue;
    if (type === "Exact") {
      result.push({ name, value: { $case: "exact", value: Buffer.from(value) } });
    } else if (type === "RegularExpression") {
      if (checkRegex(r, value, joinField(headerField, "value")))
        result.push({ name, value: { $case: "regex", value } });
    } else {
      r.fail(
        joinField(headerField, "type"),
        `must be Exact or RegularExpression, got ${JSON.stringify(type)}`,
      );
    }
  }
  return result;
}

/** CRD defaults are applied: a match without `path` gets `PathPrefix /`, a path without type is PathPrefix. */
function parseHttpMatch(r: Reader, match: JsonObject, field: string): httpRoute.HttpRouteMatch {
  const pathObj = r.object(match, "path", joinField(field, "path")) ?? {};
  const pathField = joinField(field, "path");
  const type = r.string(pathObj, "type", joinField(pathField, "type")) ?? "PathPrefix";
  const value = r.string(pathObj, "value", joinField(pathField, "value")) ?? "/";
  let path: httpRoute.PathMatch | undefined;
  if (type === "Exact" || type === "PathPrefix") {
    if (!value.startsWith("/"))
      r.fail(joinField(pathField, "value"), `must start with "/", got ${JSON.stringify(value)}`);
    else path = { kind: { $case: type === "Exact" ? "exact" : "prefix", value } };
  } else if (type === "RegularExpression") {
    if (checkRegex(r, value, joinField(pathField, "value"))) path = { kind: { $case: "regex", value } };
  } else {
    r.fail(
      joinField(pathField, "type"),
      `must be Exact, PathPrefix or RegularExpression, got ${JSON.stringify(type)}`,
    );
  }
  const headers = parseHeaderMatches(r, match, joinField(field, "headers"));
  const queryParams: httpRoute.QueryParamMatch[] = [];
  for (const [param, paramField] of r.objects(match, "queryParams", joinField(field, "queryParams"))) {
    const name = r.string(param, "name", joinField(paramField, "name"), true);
    const paramType = r.string(param, "type", joinField(paramField, "type")) ?? "Exact";
    const paramValue = r.string(param, "value", joinField(paramField, "value"), true);
    if (name === undefined || paramValue === undefined) continue;
    if (paramType === "Exact") queryParams.push({ name, value: { $case: "exact", value: paramValue } });
    else if (paramType === "RegularExpression") {
      if (checkRegex(r, paramValue, joinField(paramField, "value")))
        queryParams.push({ name, value: { $case: "regex", value: paramValue } });
    } else
      r.fail(
        joinField(paramField, "type"),
        `must be Exact or RegularExpression, got ${JSON.stringify(paramType)}`,
      );
  }
  const methodText = r.string(match, "method", joinField(field, "method"));
  let method: httpTypes.HttpMethod | undefined;
  if (methodText !== undefined) {
    method = registeredMethod(methodText);
    if (!method)
      r.fail(
        joinField(field, "method"),
        `must be one of ${Object.keys(METHODS).join(", ")}, got ${JSON.stringify(methodText)}`,
      );
  }
  return { path, headers, queryParams, method };
}

function parseHeaderList(r: Reader, obj: JsonObject, key: string, field: string): httpTypes.Headers {
  const headers: httpTypes.Headers_Header[] = [];
  for (const [header, headerField] of r.objects(obj, key, field)) {
    const name = r.string(header, "name", joinField(headerField, "name"), true);
    const value = r.string(header, "value", joinField(headerField, "value"), true);
    if (name !== undefined && !HEADER_NAME.test(name))
      r.fail(joinField(headerField, "name"), `${JSON.stringify(name)} is not a valid header name`);
    if (name !== undefined && value !== undefined) headers.push({ name, value: Buffer.from(value) });
  }
  return { headers };
}

function parseHeaderModifier(r: Reader, obj: JsonObject, field: string): httpRoute.RequestHeaderModifier {
  // Linkerd always sends `add` and `set`, possibly empty (`convert_request_header_modifier_filter`).
  return {
    add: parseHeaderList(r, obj, "add", joinField(field, "add")),
    set: parseHeaderList(r, obj, "set", joinField(field, "set")),
    remove: r.strings(obj, "remove", joinField(field, "remove")) ?? [],
  };
}

function parseRedirect(r: Reader, obj: JsonObject, field: string): httpRoute.RequestRedirect {
  const schemeText = r.string(obj, "scheme", joinField(field, "scheme"));
  if (schemeText !== undefined && schemeText !== "http" && schemeText !== "https") {
    r.fail(joinField(field, "scheme"), `must be http or https, got ${JSON.stringify(schemeText)}`);
  }
  // The controller looks the lower-case scheme up among the enum names HTTP/HTTPS, misses, and sends it
  // unregistered (`convert_redirect_filter`); the proxy parses either form.
  const scheme: httpTypes.Scheme | undefined =
    schemeText === undefined ? undefined : { type: { $case: "unregistered", value: schemeText } };
  const host = r.string(obj, "hostname", joinField(field, "hostname")) ?? "";
  const pathObj = r.object(obj, "path", joinField(field, "path"));
  let path: httpRoute.PathModifier | undefined;
  if (pathObj) {
    const pathField = joinField(field, "path");
    const type = r.string(pathObj, "type", joinField(pathField, "type"), true);
    if (type === "ReplaceFullPath") {
      const full = r.string(pathObj, "replaceFullPath", joinField(pathField, "replaceFullPath"), true);
      if (full !== undefined) path = { replace: { $case: "full", value: full } };
    } else if (type === "ReplacePrefixMatch") {
      const prefix = r.string(
        pathObj,
        "replacePrefixMatch",
        joinField(pathField, "replacePrefixMatch"),
        true,
      );
      if (prefix !== undefined) path = { replace: { $case: "prefix", value: prefix } };
    } else if (type !== undefined) {
      r.fail(
        joinField(pathField, "type"),
        `must be ReplaceFullPath or ReplacePrefixMatch, got ${JSON.stringify(type)}`,
      );
    }
  }
  const port = r.integer(obj, "port", joinField(field, "port"), 1, 65535) ?? 0;
  // The CRDs default statusCode to 302.
  const status = r.integer(obj, "statusCode", joinField(field, "statusCode"), 300, 399) ?? 302;
  if (![301, 302, 303, 307, 308].includes(status))
    r.fail(joinField(field, "statusCode"), `must be 301, 302, 303, 307 or 308, got ${status}`);
  return { scheme, host, path, port, status };
}

function parseFilters(r: Reader, obj: JsonObject, field: string, grpc: boolean): RouteFilter[] {
  const result: RouteFilter[] = [];
  for (const [filter, filterField] of r.objects(obj, "filters", field)) {
    const type = r.string(filter, "type", joinField(filterField, "type"), true);
    if (type === "RequestHeaderModifier") {
      const value = r.object(
        filter,
        "requestHeaderModifier",
        joinField(filterField, "requestHeaderModifier"),
        true,
      );
      if (value)
        result.push({
          kind: "requestHeaderModifier",
          value: parseHeaderModifier(r, value, joinField(filterField, "requestHeaderModifier")),
        });
    } else if (type === "ResponseHeaderModifier") {
      const value = r.object(
        filter,
        "responseHeaderModifier",
        joinField(filterField, "responseHeaderModifier"),
        true,
      );
      if (value)
        result.push({
          kind: "responseHeaderModifier",
          value: parseHeaderModifier(r, value, joinField(filterField, "responseHeaderModifier")),
        });
    } else if (type === "RequestRedirect" && !grpc) {
      const value = r.object(filter, "requestRedirect", joinField(filterField, "requestRedirect"), true);
      if (value)
        result.push({
          kind: "redirect",
          value: parseRedirect(r, value, joinField(filterField, "requestRedirect")),
        });
    } else if (type !== undefined) {
      // Linkerd rejects the whole route for these (RequestMirror, URLRewrite, ExtensionRef, …).
      r.fail(joinField(filterField, "type"), `filter ${JSON.stringify(type)} is not supported by Linkerd`);
    }
  }
  return result;
}

function parseBackendRefs(
  r: Reader,
  obj: JsonObject,
  field: string,
  namespace: string,
  grpc: boolean,
): BackendRef[] {
  const result: BackendRef[] = [];
  for (const [ref, refField] of r.objects(obj, "backendRefs", field)) {
    const group = r.string(ref, "group", joinField(refField, "group")) ?? "";
    const kind = r.string(ref, "kind", joinField(refField, "kind")) ?? "Service";
    const name = r.string(ref, "name", joinField(refField, "name"), true);
    const refNamespace = r.string(ref, "namespace", joinField(refField, "namespace")) ?? namespace;
    const port = r.integer(ref, "port", joinField(refField, "port"), 1, 65535);
    const weight = r.integer(ref, "weight", joinField(refField, "weight"), 0, 1_000_000) ?? 1;
    const filters = parseFilters(r, ref, joinField(refField, "filters"), grpc);
    if (!isGroup({ group }, "core") || kind !== "Service") {
      r.fail(refField, `unsupported backend ${group || "core"}/${kind}: only Services are supported`);
      continue;
    }
    if (port === undefined) {
      r.fail(joinField(refField, "port"), "is required for a Service backend");
      continue;
    }
    if (name !== undefined)
      result.push({ name, namespace: refNamespace, port, weight, filters, field: refField });
  }
  return result;
}

function parseHostnames(r: Reader, spec: JsonObject): httpRoute.HostMatch[] {
  const result: httpRoute.HostMatch[] = [];
  (r.strings(spec, "hostnames", "spec.hostnames") ?? []).forEach((host, index) => {
    const field = joinField("spec.hostnames", index);
    if (host.startsWith("*.")) {
      const rest = host.slice(2).toLowerCase();
      if (!isDnsName(rest)) r.fail(field, `${JSON.stringify(host)} is not a valid wildcard hostname`);
      else result.push({ match: { $case: "suffix", value: { reverseLabels: rest.split(".").reverse() } } });
    } else if (!isDnsName(host.toLowerCase())) {
      r.fail(field, `${JSON.stringify(host)} is not a valid hostname`);
    } else {
      result.push({ match: { $case: "exact", value: host } });
    }
  });
  return result;
}

function parseParentRefs(r: Reader, spec: JsonObject, namespace: string): ParentRef[] {
  const result: ParentRef[] = [];
  for (const [ref, refField] of r.objects(spec, "parentRefs", "spec.parentRefs")) {
    // Gateway API defaults: group gateway.networking.k8s.io, kind Gateway.
    const group = r.string(ref, "group", joinField(refField, "group")) ?? "gateway.networking.k8s.io";
    const kind = r.string(ref, "kind", joinField(refField, "kind")) ?? "Gateway";
    const name = r.string(ref, "name", joinField(refField, "name"), true);
    const refNamespace = r.string(ref, "namespace", joinField(refField, "namespace")) ?? namespace;
    const port = r.integer(ref, "port", joinField(refField, "port"), 1, 65535);
    const sectionName = r.string(ref, "sectionName", joinField(refField, "sectionName"));
    if (name !== undefined)
      result.push({ group, kind, name, namespace: refNamespace, port, sectionName, field: refField });
  }
  return result;
}

export function parseHttpRoute(r: Reader, doc: JsonObject, group: string): HttpRouteRes | undefined {
  const meta = parseMeta(r, doc, true);
  const namespace = meta?.namespace ?? "default";
  const spec = r.object(doc, "spec", "spec", true) ?? {};
  const parentRefs = parseParentRefs(r, spec, namespace);
  const hostnames = parseHostnames(r, spec);
  const rules: HttpRuleRes[] = [];
  for (const [rule, ruleField] of r.objects(spec, "rules", "spec.rules")) {
    const matchList = r.objects(rule, "matches", joinField(ruleField, "matches"));
    const matches =
      r.raw(rule, "matches") === undefined
        ? [parseHttpMatch(r, {}, joinField(ruleField, "matches"))]
        : matchList.map(([m, f]) => parseHttpMatch(r, m, f));
    const filters = parseFilters(r, rule, joinField(ruleField, "filters"), false);
    const backendRefs = parseBackendRefs(r, rule, joinField(ruleField, "backendRefs"), namespace, false);
    let requestTimeoutMs: number | undefined;
    const timeouts = r.object(rule, "timeouts", joinField(ruleField, "timeouts"));
    if (timeouts) {
      const timeoutsField = joinField(ruleField, "timeouts");
      for (const key of ["request", "backendRequest"]) {
        const text = r.string(timeouts, key, joinField(timeoutsField, key));
        if (text === undefined) continue;
        const ms = parseGatewayDurationMs(text);
        if (ms === undefined)
          r.fail(
            joinField(timeoutsField, key),
            `${JSON.stringify(text)} is not a duration like 10s or 500ms`,
          );
        else if (key === "request" && group === "policy.linkerd.io" && ms > 0) requestTimeoutMs = ms;
      }
    }
    rules.push({ matches, filters, backendRefs, requestTimeoutMs });
  }
  // CRD default: a route without rules has one rule matching PathPrefix /.
  if (r.raw(spec, "rules") === undefined) {
    rules.push({
      matches: [parseHttpMatch(r, {}, "spec.rules")],
      filters: [],
      backendRefs: [],
      requestTimeoutMs: undefined,
    });
  }
  if (!meta) return undefined;
  return { meta, group, kind: "HTTPRoute", parentRefs, hostnames, rules };
}

export function parseGrpcRoute(r: Reader, doc: JsonObject): GrpcRouteRes | undefined {
  const meta = parseMeta(r, doc, true);
  const namespace = meta?.namespace ?? "default";
  const spec = r.object(doc, "spec", "spec", true) ?? {};
  const parentRefs = parseParentRefs(r, spec, namespace);
  const hostnames = parseHostnames(r, spec);
  const rules: GrpcRuleRes[] = [];
  for (const [rule, ruleField] of r.objects(spec, "rules", "spec.rules")) {
    const matches: grpcRoute.GrpcRouteMatch[] = [];
    for (const [match, matchField] of r.objects(rule, "matches", joinField(ruleField, "matches"))) {
      const method = r.object(match, "method", joinField(matchField, "method")) ?? {};
      const methodField = joinField(matchField, "method");
      const type = r.string(method, "type", joinField(methodField, "type")) ?? "Exact";
      if (type !== "Exact") {
        r.fail(
          joinField(methodField, "type"),
          `only Exact gRPC method matches are supported by Linkerd, got ${JSON.stringify(type)}`,
        );
      }
      const service = r.string(method, "service", joinField(methodField, "service")) ?? "";
      const methodName = r.string(method, "method", joinField(methodField, "method")) ?? "";
      const headers = parseHeaderMatches(r, match, joinField(matchField, "headers"));
      matches.push({ rpc: { service, method: methodName }, headers });
    }
    const filters = parseFilters(r, rule, joinField(ruleField, "filters"), true);
    const backendRefs = parseBackendRefs(r, rule, joinField(ruleField, "backendRefs"), namespace, true);
    rules.push({ matches, filters, backendRefs });
  }
  if (!meta) return undefined;
  return { meta, group: "gateway.networking.k8s.io", kind: "GRPCRoute", parentRefs, hostnames, rules };
}

// ---------------------------------------------------------------------------------------------
// HTTPLocalRateLimitPolicy (policy.linkerd.io/v1alpha1, Linkerd 2.17)

export interface RateLimitPolicyRes {
  readonly meta: Meta;
  /** The Server it limits (in its own namespace). */
  readonly serverName: string;
  readonly totalRps: number | undefined;
  readonly identityRps: number | undefined;
  readonly overrides: readonly {
    readonly rps: number;
    readonly serviceAccounts: readonly { readonly name: string; readonly namespace: string }[];
  }[];
}

const MAX_RPS = 0xffffffff;

/** `spec.targetRef` (a Server), `total`, `identity` and `overrides[].clientRefs` of ServiceAccounts. */
export function parseRateLimitPolicy(r: Reader, doc: JsonObject): RateLimitPolicyRes | undefined {
  const meta = parseMeta(r, doc, true);
  const namespace = meta?.namespace ?? "default";
  const spec = r.object(doc, "spec", "spec", true) ?? {};
  const targetObj = r.object(spec, "targetRef", "spec.targetRef", true);
  const targetRef = targetObj ? parseRef(r, targetObj, "spec.targetRef") : undefined;
  if (targetRef && !(targetRef.kind.toLowerCase() === "server" && isGroup(targetRef, "policy.linkerd.io"))) {
    r.fail(
      "spec.targetRef",
      `unsupported target ${targetRef.group || "core"}/${targetRef.kind}: use a policy.linkerd.io Server`,
    );
  }
  if (targetRef?.namespace !== undefined && targetRef.namespace !== namespace) {
    r.fail("spec.targetRef.namespace", "a target must be in the policy's own namespace");
  }
  const rps = (obj: JsonObject | undefined, field: string) =>
    obj === undefined
      ? undefined
      : r.integer(obj, "requestsPerSecond", joinField(field, "requestsPerSecond"), 1, MAX_RPS, true);
  const totalRps = rps(r.object(spec, "total", "spec.total"), "spec.total");
  const identityRps = rps(r.object(spec, "identity", "spec.identity"), "spec.identity");
  if (totalRps !== undefined && identityRps !== undefined && identityRps > totalRps) {
    r.fail("spec.identity.requestsPerSecond", `must not exceed spec.total.requestsPerSecond (${totalRps})`);
  }
  const overrides: RateLimitPolicyRes["overrides"][number][] = [];
  for (const [override, field] of r.objects(spec, "overrides", "spec.overrides")) {
    const limit = r.integer(
      override,
      "requestsPerSecond",
      joinField(field, "requestsPerSecond"),
      1,
      MAX_RPS,
      true,
    );
    if (limit !== undefined && totalRps !== undefined && limit > totalRps) {
      r.fail(
        joinField(field, "requestsPerSecond"),
        `must not exceed spec.total.requestsPerSecond (${totalRps})`,
      );
    }
    const serviceAccounts: { name: string; namespace: string }[] = [];
    for (const [ref, refField] of r.objects(override, "clientRefs", joinField(field, "clientRefs"), true)) {
      const kind = r.string(ref, "kind", joinField(refField, "kind"), true);
      const name = r.string(ref, "name", joinField(refField, "name"), true);
      const refNamespace = r.string(ref, "namespace", joinField(refField, "namespace"));
      if (kind !== undefined && kind !== "ServiceAccount") {
        r.fail(
          joinField(refField, "kind"),
          `unsupported client reference ${JSON.stringify(kind)}: use ServiceAccount`,
        );
      } else if (name !== undefined) {
        serviceAccounts.push({ name, namespace: refNamespace ?? namespace });
      }
    }
    if (limit !== undefined) overrides.push({ rps: limit, serviceAccounts });
  }
  if (!meta || !targetRef) return undefined;
  return { meta, serverName: targetRef.name, totalRps, identityRps, overrides };
}
