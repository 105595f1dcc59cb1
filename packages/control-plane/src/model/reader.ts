import type { ManifestProblem } from "./types.js";

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

export function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Where a resource came from, so every problem can name file, document and field. */
export interface Source {
  readonly file: string;
  readonly document: number;
  /** `items[3].` for an entry of a `kind: List`, else "". */
  readonly fieldPrefix: string;
  /** 1-based line where the document's content starts, when known. */
  readonly line?: number;
}

/** Collects problems; nothing is built while it holds any. */
export class Problems {
  readonly list: ManifestProblem[] = [];
  readonly warnings: ManifestProblem[] = [];

  add(
    source: Source,
    kind: string | undefined,
    name: string | undefined,
    field: string | undefined,
    message: string,
  ): void {
    this.list.push(problem(source, kind, name, field, message));
  }

  warn(
    source: Source,
    kind: string | undefined,
    name: string | undefined,
    field: string | undefined,
    message: string,
  ): void {
    this.warnings.push(problem(source, kind, name, field, message));
  }
}

function problem(
  source: Source,
  kind: string | undefined,
  name: string | undefined,
  field: string | undefined,
  message: string,
): ManifestProblem {
  const result: ManifestProblem = { file: source.file, document: source.document, message };
  if (source.line !== undefined) result.line = source.line;
  if (kind !== undefined && kind !== "") result.kind = kind;
  if (name !== undefined) result.name = name;
  const fullField =
    field === undefined
      ? source.fieldPrefix === ""
        ? undefined
        : source.fieldPrefix.slice(0, -1)
      : `${source.fieldPrefix}${field}`;
  if (fullField !== undefined) result.field = fullField;
  return result;
}

export function joinField(base: string, key: string | number): string {
  if (typeof key === "number") return `${base}[${key}]`;
  // Annotation and label keys contain dots and slashes: quote them so the path stays unambiguous.
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) return `${base}[${JSON.stringify(key)}]`;
  return base === "" ? key : `${base}.${key}`;
}

/**
 * Typed access to one resource document. Every getter records a problem (and returns undefined) when
 * the value has the wrong type, so parsing continues and all problems are reported at once.
 */
export class Reader {
  kind: string;
  name: string | undefined;

  constructor(
    readonly problems: Problems,
    readonly source: Source,
    kind: string,
  ) {
    this.kind = kind;
    this.name = undefined;
  }

  fail(field: string | undefined, message: string): undefined {
    this.problems.add(this.source, this.kind, this.name, field, message);
    return undefined;
  }

  warn(field: string | undefined, message: string): void {
    this.problems.warn(this.source, this.kind, this.name, field, message);
  }

  /** Value at `field` of `obj`, or undefined when absent or null (Kubernetes treats null as unset). */
  raw(obj: JsonObject, key: string): Json | undefined {
    const value = obj[key];
    return value === null ? undefined : value;
  }

  object(obj: JsonObject, key: string, field: string, required = false): JsonObject | undefined {
    const value = this.raw(obj, key);
    if (value === undefined) return required ? this.fail(field, "is required") : undefined;
    if (!isObject(value)) return this.fail(field, `must be a mapping, got ${describe(value)}`);
    return value;
  }

  array(obj: JsonObject, key: string, field: string, required = false): Json[] | undefined {
    const value = this.raw(obj, key);
    if (value === undefined) return required ? this.fail(field, "is required") : undefined;
    if (!Array.isArray(value)) return this.fail(field, `must be a list, got ${describe(value)}`);
    return value;
  }

  /** Each element of a list that must be a mapping, with its field path. */
  objects(obj: JsonObject, key: string, field: string, required = false): Array<[JsonObject, string]> {
    const list = this.array(obj, key, field, required);
    if (list === undefined) return [];
    const result: Array<[JsonObject, string]> = [];
    list.forEach((item, index) => {
      const itemField = joinField(field, index);
      if (!isObject(item)) this.fail(itemField, `must be a mapping, got ${describe(item)}`);
      else result.push([item, itemField]);
    });
    return result;
  }

  string(obj: JsonObject, key: string, field: string, required = false): string | undefined {
    const value = this.raw(obj, key);
    if (value === undefined) return required ? this.fail(field, "is required") : undefined;
    if (typeof value !== "string") return this.fail(field, `must be a string, got ${describe(value)}`);
    if (required && value === "") return this.fail(field, "must not be empty");
    return value;
  }

  strings(obj: JsonObject, key: string, field: string): string[] | undefined {
    const list = this.array(obj, key, field);
    if (list === undefined) return undefined;
    const result: string[] = [];
    list.forEach((item, index) => {
      if (typeof item !== "string")
        this.fail(joinField(field, index), `must be a string, got ${describe(item)}`);
      else result.push(item);
    });
    return result;
  }

  boolean(obj: JsonObject, key: string, field: string): boolean | undefined {
    const value = this.raw(obj, key);
    if (value === undefined) return undefined;
    if (typeof value !== "boolean") return this.fail(field, `must be true or false, got ${describe(value)}`);
    return value;
  }

  integer(
    obj: JsonObject,
    key: string,
    field: string,
    min: number,
    max: number,
    required = false,
  ): number | undefined {
    const value = this.raw(obj, key);
    if (value === undefined) return required ? this.fail(field, "is required") : undefined;
    if (typeof value !== "number" || !Number.isInteger(value)) {
      return this.fail(field, `must be an integer, got ${describe(value)}`);
    }
    if (value < min || value > max)
      return this.fail(field, `must be between ${min} and ${max}, got ${value}`);
    return value;
  }

  number(obj: JsonObject, key: string, field: string): number | undefined {
    const value = this.raw(obj, key);
    if (value === undefined) return undefined;
    if (typeof value !== "number" || !Number.isFinite(value))
      return this.fail(field, `must be a number, got ${describe(value)}`);
    return value;
  }

  /** A port given as a number (1-65535) or an IANA service name. */
  portOrName(obj: JsonObject, key: string, field: string, required = false): number | string | undefined {
    const value = this.raw(obj, key);
    if (value === undefined) return required ? this.fail(field, "is required") : undefined;
    if (typeof value === "number") {
      if (!Number.isInteger(value) || value < 1 || value > 65535) {
        return this.fail(field, `must be a port number 1-65535 or a port name, got ${value}`);
      }
      return value;
    }
    if (typeof value === "string") {
      if (/^\d+$/.test(value)) {
        // Kubernetes IntOrString: a quoted number is still the string form, which is never a valid name.
        return this.fail(
          field,
          `must be a port number or a port name, got the string ${JSON.stringify(value)}`,
        );
      }
      if (!isPortName(value)) return this.fail(field, `${JSON.stringify(value)} is not a valid port name`);
      return value;
    }
    return this.fail(field, `must be a port number or a port name, got ${describe(value)}`);
  }

  /** A `map[string]string` such as labels, annotations or a selector. */
  stringMap(obj: JsonObject, key: string, field: string): Record<string, string> {
    const value = this.raw(obj, key);
    if (value === undefined) return {};
    if (!isObject(value)) {
      this.fail(field, `must be a mapping of strings, got ${describe(value)}`);
      return {};
    }
    const result: Record<string, string> = Object.create(null);
    for (const [k, v] of Object.entries(value)) {
      if (typeof v !== "string")
        this.fail(joinField(field, k), `must be a string, got ${describe(v)} (quote it)`);
      else result[k] = v;
    }
    return result;
  }
}

export function describe(value: Json | undefined): string {
  if (value === undefined || value === null) return "nothing";
  if (Array.isArray(value)) return "a list";
  if (typeof value === "object") return "a mapping";
  if (typeof value === "string")
    return `the string ${JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value)}`;
  return `${typeof value} ${String(value)}`;
}

/** IANA_SVC_NAME: at most 15 characters, lower-case alphanumerics and '-', at least one letter. */
export function isPortName(value: string): boolean {
  return (
    value.length <= 15 &&
    /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/.test(value) &&
    /[a-z]/.test(value) &&
    !value.includes("--")
  );
}

/** RFC 1123 DNS subdomain (resource names). */
export function isDnsSubdomain(value: string): boolean {
  return (
    value.length > 0 &&
    value.length <= 253 &&
    /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/.test(value)
  );
}

/** RFC 1123 DNS label (namespace names). */
export function isDnsLabel(value: string): boolean {
  return value.length > 0 && value.length <= 63 && /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(value);
}
