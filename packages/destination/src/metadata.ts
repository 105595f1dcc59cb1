import type { meta } from "@inmesh/proto";

/**
 * A flattened `meta.Metadata`: either a built-in object (`isDefault`, with `name` set) or a Kubernetes
 * resource. Flat so it can feed metric labels (`route_name`, `route_kind`, …) directly.
 */
export interface ResourceMetadata {
  readonly isDefault: boolean;
  readonly group: string;
  readonly kind: string;
  readonly name: string;
  readonly namespace: string;
  readonly section: string;
  readonly port: number;
}

const EMPTY: ResourceMetadata = Object.freeze({
  isDefault: true,
  group: "",
  kind: "",
  name: "",
  namespace: "",
  section: "",
  port: 0,
});

export function metadataFromProto(metadata: meta.Metadata | undefined): ResourceMetadata {
  const kind = metadata?.kind;
  if (!kind) return EMPTY;
  if (kind.$case === "default") return Object.freeze({ ...EMPTY, name: kind.value });
  const r = kind.value;
  return Object.freeze({
    isDefault: false,
    group: r.group,
    kind: r.kind,
    name: r.name,
    namespace: r.namespace,
    section: r.section,
    port: r.port,
  });
}
