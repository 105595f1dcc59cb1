/** YAML files → typed resources (or problems), one document at a time. */
import { parseAllDocuments } from "yaml";
import { type EgressNetworkRes, parseEgressNetwork } from "./egress.js";
import {
  describe,
  isObject,
  type Json,
  type JsonObject,
  type Problems,
  Reader,
  type Source,
} from "./reader.js";
import {
  type AuthorizationPolicyRes,
  type GrpcRouteRes,
  type HttpRouteRes,
  type MeshTLSAuthenticationRes,
  type NamespaceRes,
  type NetworkAuthenticationRes,
  type PodRes,
  parseAuthorizationPolicy,
  parseGrpcRoute,
  parseHttpRoute,
  parseMeshTLSAuthentication,
  parseNamespace,
  parseNetworkAuthentication,
  parsePod,
  parseRateLimitPolicy,
  parseServer,
  parseServerAuthorization,
  parseService,
  parseServiceAccount,
  type RateLimitPolicyRes,
  type ServerAuthorizationRes,
  type ServerRes,
  type ServiceAccountRes,
  type ServiceRes,
} from "./resources.js";
import { parseServiceProfile, type ServiceProfileRes } from "./service-profile.js";
import type { ManifestFile } from "./types.js";

export interface Resources {
  readonly namespaces: NamespaceRes[];
  readonly serviceAccounts: ServiceAccountRes[];
  readonly pods: PodRes[];
  readonly services: ServiceRes[];
  readonly servers: ServerRes[];
  readonly serverAuthorizations: ServerAuthorizationRes[];
  readonly authorizationPolicies: AuthorizationPolicyRes[];
  readonly meshTLSAuthentications: MeshTLSAuthenticationRes[];
  readonly networkAuthentications: NetworkAuthenticationRes[];
  readonly httpRoutes: HttpRouteRes[];
  readonly grpcRoutes: GrpcRouteRes[];
  readonly serviceProfiles: ServiceProfileRes[];
  readonly rateLimitPolicies: RateLimitPolicyRes[];
  readonly egressNetworks: EgressNetworkRes[];
}

type Handler = (r: Reader, doc: JsonObject, out: Resources) => void;

function push<T>(list: T[], value: T | undefined): void {
  if (value !== undefined) list.push(value);
}

interface KindSpec {
  readonly versions: readonly string[];
  readonly handle: Handler;
}

/** Supported group → kind → versions. Anything else is refused: a typo must not silently vanish. */
const KINDS: Readonly<Record<string, Readonly<Record<string, KindSpec>>>> = {
  "": {
    Pod: { versions: ["v1"], handle: (r, d, o) => push(o.pods, parsePod(r, d)) },
    Service: { versions: ["v1"], handle: (r, d, o) => push(o.services, parseService(r, d)) },
    Namespace: { versions: ["v1"], handle: (r, d, o) => push(o.namespaces, parseNamespace(r, d)) },
    ServiceAccount: {
      versions: ["v1"],
      handle: (r, d, o) => push(o.serviceAccounts, parseServiceAccount(r, d)),
    },
  },
  "policy.linkerd.io": {
    Server: {
      versions: ["v1alpha1", "v1beta1", "v1beta2", "v1beta3"],
      handle: (r, d, o) => push(o.servers, parseServer(r, d)),
    },
    ServerAuthorization: {
      versions: ["v1alpha1", "v1beta1"],
      handle: (r, d, o) => push(o.serverAuthorizations, parseServerAuthorization(r, d)),
    },
    AuthorizationPolicy: {
      versions: ["v1alpha1"],
      handle: (r, d, o) => push(o.authorizationPolicies, parseAuthorizationPolicy(r, d)),
    },
    MeshTLSAuthentication: {
      versions: ["v1alpha1"],
      handle: (r, d, o) => push(o.meshTLSAuthentications, parseMeshTLSAuthentication(r, d)),
    },
    NetworkAuthentication: {
      versions: ["v1alpha1"],
      handle: (r, d, o) => push(o.networkAuthentications, parseNetworkAuthentication(r, d)),
    },
    HTTPLocalRateLimitPolicy: {
      versions: ["v1alpha1"],
      handle: (r, d, o) => push(o.rateLimitPolicies, parseRateLimitPolicy(r, d)),
    },
    EgressNetwork: {
      versions: ["v1alpha1"],
      handle: (r, d, o) => push(o.egressNetworks, parseEgressNetwork(r, d)),
    },
    HTTPRoute: {
      versions: ["v1alpha1", "v1beta1", "v1beta2", "v1beta3"],
      handle: (r, d, o) => push(o.httpRoutes, parseHttpRoute(r, d, "policy.linkerd.io")),
    },
  },
  "gateway.networking.k8s.io": {
    HTTPRoute: {
      versions: ["v1alpha2", "v1beta1", "v1"],
      handle: (r, d, o) => push(o.httpRoutes, parseHttpRoute(r, d, "gateway.networking.k8s.io")),
    },
    GRPCRoute: {
      versions: ["v1alpha2", "v1"],
      handle: (r, d, o) => push(o.grpcRoutes, parseGrpcRoute(r, d)),
    },
  },
  "linkerd.io": {
    ServiceProfile: {
      versions: ["v1alpha1", "v1alpha2"],
      handle: (r, d, o) => push(o.serviceProfiles, parseServiceProfile(r, d)),
    },
  },
};

const WORKLOAD_KINDS = new Set(["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"]);

/** `metadata.managedFields` and `status` are kubectl noise the parsers simply never read. */
function handleDocument(
  problems: Problems,
  out: Resources,
  value: Json,
  source: Source,
  listDepth: number,
): void {
  const probe = new Reader(
    problems,
    source,
    isObject(value) && typeof value.kind === "string" ? value.kind : "",
  );
  if (!isObject(value)) {
    probe.fail(undefined, `a manifest must be a mapping with apiVersion and kind, got ${describe(value)}`);
    return;
  }
  const apiVersion = probe.string(value, "apiVersion", "apiVersion", true);
  const kind = probe.string(value, "kind", "kind", true);
  if (apiVersion === undefined || kind === undefined) return;
  const slash = apiVersion.lastIndexOf("/");
  const group = slash < 0 ? "" : apiVersion.slice(0, slash);
  const version = slash < 0 ? apiVersion : apiVersion.slice(slash + 1);
  if (kind === "List" || (kind.endsWith("List") && Array.isArray(value.items))) {
    if (listDepth > 0) {
      probe.fail("kind", "a List inside a List is not supported");
      return;
    }
    const r = new Reader(problems, source, kind);
    r.objects(value, "items", "items", true);
    const items = Array.isArray(value.items) ? value.items : [];
    items.forEach((item, index) => {
      if (!isObject(item)) return; // already reported by r.objects
      handleDocument(
        problems,
        out,
        item,
        { ...source, fieldPrefix: `${source.fieldPrefix}items[${index}].` },
        listDepth + 1,
      );
    });
    return;
  }
  const r = new Reader(problems, source, kind);
  const groupKinds = KINDS[group];
  if (groupKinds === undefined) {
    if (group === "apps" || group === "batch" || WORKLOAD_KINDS.has(kind)) {
      r.fail(
        "kind",
        `${kind} is not supported by the dev control plane: it runs no controllers, so write the Pods themselves`,
      );
    } else {
      r.fail(
        "apiVersion",
        `unknown API group ${JSON.stringify(group || "core")} (apiVersion ${JSON.stringify(apiVersion)})`,
      );
    }
    return;
  }
  const spec = groupKinds[kind];
  if (spec === undefined) {
    r.fail(
      "kind",
      `unknown kind ${JSON.stringify(kind)} for apiVersion ${JSON.stringify(apiVersion)}; supported: ${Object.keys(groupKinds).join(", ")}`,
    );
    return;
  }
  if (!spec.versions.includes(version)) {
    r.fail(
      "apiVersion",
      `${kind} is not served as ${JSON.stringify(apiVersion)}; use ${spec.versions.map((v) => (group ? `${group}/${v}` : v)).join(", ")}`,
    );
    return;
  }
  spec.handle(r, value, out);
}

export function loadResources(files: readonly ManifestFile[], problems: Problems): Resources {
  const out: Resources = {
    namespaces: [],
    serviceAccounts: [],
    pods: [],
    services: [],
    servers: [],
    serverAuthorizations: [],
    authorizationPolicies: [],
    meshTLSAuthentications: [],
    networkAuthentications: [],
    httpRoutes: [],
    grpcRoutes: [],
    serviceProfiles: [],
    rateLimitPolicies: [],
    egressNetworks: [],
  };
  for (const file of files) {
    const documents = parseAllDocuments(file.text, { uniqueKeys: true });
    if (!Array.isArray(documents)) {
      problems.add(
        { file: file.path, document: 0, fieldPrefix: "" },
        undefined,
        undefined,
        undefined,
        "not a YAML stream",
      );
      continue;
    }
    const lineStarts: number[] = [0];
    for (let i = file.text.indexOf("\n"); i >= 0; i = file.text.indexOf("\n", i + 1)) lineStarts.push(i + 1);
    const lineOf = (offset: number) => {
      let low = 0;
      let high = lineStarts.length - 1;
      while (low < high) {
        const mid = (low + high + 1) >> 1;
        if ((lineStarts[mid] as number) <= offset) low = mid;
        else high = mid - 1;
      }
      return low + 1;
    };
    documents.forEach((document, index) => {
      const start = document.contents?.range?.[0];
      const source: Source =
        start === undefined
          ? { file: file.path, document: index, fieldPrefix: "" }
          : { file: file.path, document: index, fieldPrefix: "", line: lineOf(start) };
      if (document.errors.length > 0) {
        for (const error of document.errors) {
          // The first line of a pretty error already says "at line L, column C".
          problems.add(
            source,
            undefined,
            undefined,
            undefined,
            `YAML syntax error: ${(error.message.split("\n")[0] ?? "").replace(/:$/, "")}`,
          );
        }
        return;
      }
      let value: unknown;
      try {
        value = document.toJS({ maxAliasCount: 100 });
      } catch (error) {
        problems.add(source, undefined, undefined, undefined, `YAML error: ${(error as Error).message}`);
        return;
      }
      if (value === null || value === undefined) return; // an empty document (`---` alone)
      handleDocument(problems, out, value as Json, source, 0);
    });
  }
  return out;
}
