import { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import { parseArgs, parseEnv } from "node:util";
import { type ChannelCredentials, credentials, status as grpcStatus, Metadata } from "@grpc/grpc-js";
import { type ControlPlaneAddress, type Env, isMeshError, parseDurationMs } from "@inmesh/core";
import { createIdentityProvider, type IdentityProvider, resolveIdentityConfig } from "@inmesh/identity";
import { resolveMeshConfig } from "@inmesh/mesh";
import { destination, inbound } from "@inmesh/proto";
import { type CliIo, type Command, UsageError } from "../io.js";

const usage = "inmesh check [--output text|json] [--env-file FILE] [--timeout 10s]";

export type CheckStatus = "ok" | "warn" | "fail";

export interface CheckResult {
  readonly name: string;
  readonly status: CheckStatus;
  readonly message: string;
}

export interface CheckOptions {
  /** Bound on each network step. @default 10000 */
  timeoutMs?: number;
  /** Trust anchors closer than this to expiry are a warning. @default 60 days, as `linkerd check` */
  anchorWarningMs?: number;
  /** Largest tolerated gap between our clock and the issuer's. @default 5 minutes */
  maxClockSkewMs?: number;
  nowMs?: number;
}

const DAY_MS = 86_400_000;

function describeDuration(ms: number): string {
  if (Math.abs(ms) >= DAY_MS) return `${Math.round(ms / DAY_MS)}d`;
  if (Math.abs(ms) >= 3_600_000) return `${Math.round(ms / 3_600_000)}h`;
  if (Math.abs(ms) >= 60_000) return `${Math.round(ms / 60_000)}m`;
  return `${Math.round(ms / 1000)}s`;
}

function errorText(error: unknown): string {
  if (isMeshError(error)) return `${error.message} (${error.code})`;
  return error instanceof Error ? error.message : String(error);
}

function target(address: ControlPlaneAddress): string {
  return address.host.includes(":") ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}

/** mTLS to the policy and destination controllers with our certificate, or plaintext on loopback. */
function controlPlaneCredentials(
  address: ControlPlaneAddress,
  identity: IdentityProvider,
): ChannelCredentials {
  if (address.plaintext) return credentials.createInsecure();
  const material = identity.material();
  const expected = address.serverName as string;
  return credentials.createSsl(
    Buffer.from(material.trustAnchorsPem),
    Buffer.from(material.privateKeyPem),
    Buffer.from(material.certificateChainPem),
    { checkServerIdentity: identity.checkServerIdentity(expected) },
  );
}

function channelOptions(address: ControlPlaneAddress) {
  return {
    "grpc.max_receive_message_length": 4 * 1024 * 1024,
    ...(address.plaintext ? {} : { "grpc.ssl_target_name_override": address.serverName as string }),
  };
}

function deadline(timeoutMs: number): Date {
  return new Date(Date.now() + timeoutMs);
}

/** The checks `linkerd check --proxy` makes, for one service configured by LINKERD2_PROXY_* variables. */
export async function runChecks(env: Env, options: CheckOptions = {}): Promise<CheckResult[]> {
  const timeoutMs = options.timeoutMs ?? 10_000;
  const anchorWarningMs = options.anchorWarningMs ?? 60 * DAY_MS;
  const maxClockSkewMs = options.maxClockSkewMs ?? 5 * 60_000;
  const nowMs = options.nowMs ?? Date.now();
  const results: CheckResult[] = [];
  const add = (name: string, status: CheckStatus, message: string) => results.push({ name, status, message });

  let identityConfig: ReturnType<typeof resolveIdentityConfig>;
  let meshConfig: ReturnType<typeof resolveMeshConfig>;
  try {
    identityConfig = resolveIdentityConfig({ env });
    meshConfig = resolveMeshConfig(env);
    add("configuration", "ok", `LINKERD2_PROXY_* variables are valid for ${identityConfig.localName}`);
  } catch (error) {
    add("configuration", "fail", errorText(error));
    return results;
  }

  let anchorsUsable = true;
  try {
    for (const certificate of identityConfig.trustAnchors.certificates) {
      const notBefore = Date.parse(certificate.validFrom);
      const notAfter = Date.parse(certificate.validTo);
      const subject = certificate.subject.replace(/\n/g, ", ");
      if (nowMs < notBefore) {
        add("trust anchors", "fail", `${subject} is not valid before ${certificate.validFrom}`);
        anchorsUsable = false;
      } else if (nowMs > notAfter) {
        add("trust anchors", "fail", `${subject} expired on ${certificate.validTo}`);
        anchorsUsable = false;
      } else if (notAfter - nowMs < anchorWarningMs) {
        add(
          "trust anchors",
          "warn",
          `${subject} expires in ${describeDuration(notAfter - nowMs)} (${certificate.validTo})`,
        );
      } else {
        add("trust anchors", "ok", `${subject} is valid for ${describeDuration(notAfter - nowMs)}`);
      }
    }
  } catch (error) {
    add("trust anchors", "fail", errorText(error));
    anchorsUsable = false;
  }
  if (!anchorsUsable) return results;

  const identity = createIdentityProvider({ env });
  try {
    await identity.ready({ signal: AbortSignal.timeout(timeoutMs) });
    const state = identity.state();
    const leaf = new X509Certificate(identity.material().certificateChainPem);
    add(
      "identity",
      "ok",
      `certificate issued for ${state.localName} (serial ${state.serial}), expires in ${describeDuration((state.notAfterMs ?? nowMs) - Date.now())}`,
    );
    // The issuer back-dates notBefore by a small allowance (10-20 s); a gap far beyond it means our
    // clock or the issuer's is off.
    const skewMs = Date.now() - Date.parse(leaf.validFrom);
    if (skewMs < 0 || skewMs > maxClockSkewMs) {
      add("clock skew", "fail", `local clock differs from the issuer's by about ${describeDuration(skewMs)}`);
    } else {
      add("clock skew", "ok", `within ${describeDuration(maxClockSkewMs)} of the identity issuer`);
    }
  } catch (error) {
    const lastError = identity.state().lastError;
    add(
      "identity",
      "fail",
      `no certificate from ${target(identityConfig.identityService)}: ${errorText(lastError ?? error)}`,
    );
    await identity.close();
    return results;
  }

  try {
    const policy = meshConfig.policy;
    if (!policy) {
      add(
        "policy",
        "warn",
        "LINKERD2_PROXY_POLICY_SVC_ADDR is not set: inbound policy comes only from the default",
      );
    } else if (meshConfig.inboundPorts.length === 0) {
      add("policy", "warn", "LINKERD2_PROXY_INBOUND_PORTS is empty: no port to check");
    } else {
      const client = new inbound.InboundServerPoliciesClient(
        target(policy.address),
        controlPlaneCredentials(policy.address, identity),
        channelOptions(policy.address),
      );
      try {
        for (const port of meshConfig.inboundPorts) {
          const server = await new Promise<inbound.Server>((resolve, reject) =>
            client.getPort(
              { workload: policy.workload, port },
              new Metadata(),
              { deadline: deadline(timeoutMs) },
              (error, value) => (error ? reject(error) : resolve(value)),
            ),
          ).catch((error: unknown) => error as Error);
          if (server instanceof Error) {
            add("policy", "fail", `port ${port}: ${server.message}`);
          } else {
            const kind = server.labels.kind ?? "?";
            const name = server.labels.name ?? "?";
            add(
              "policy",
              "ok",
              `port ${port}: ${kind}/${name}, ${server.authorizations.length} authorization(s)`,
            );
          }
        }
      } finally {
        client.close();
      }
    }

    const destinationConfig = meshConfig.destination;
    if (!destinationConfig) {
      add("destination", "warn", "LINKERD2_PROXY_DESTINATION_SVC_ADDR is not set: no discovery");
    } else {
      const client = new destination.DestinationClient(
        target(destinationConfig.address),
        controlPlaneCredentials(destinationConfig.address, identity),
        channelOptions(destinationConfig.address),
      );
      try {
        const outcome = await new Promise<string | Error>((resolve) => {
          const stream = client.getProfile(
            { scheme: "", path: "inmesh-check.invalid:80", contextToken: destinationConfig.contextToken },
            { deadline: deadline(timeoutMs) },
          );
          stream.once("data", () => {
            stream.cancel();
            resolve("answered");
          });
          stream.once("error", (error: Error & { code?: number }) => {
            // Any answer from the controller (NotFound, InvalidArgument…) proves it is reachable.
            const unreachable =
              error.code === grpcStatus.UNAVAILABLE || error.code === grpcStatus.DEADLINE_EXCEEDED;
            resolve(unreachable ? error : "answered");
          });
        });
        if (outcome instanceof Error)
          add("destination", "fail", `${target(destinationConfig.address)}: ${outcome.message}`);
        else add("destination", "ok", `${target(destinationConfig.address)} answers`);
      } finally {
        client.close();
      }
    }
  } finally {
    await identity.close();
  }
  return results;
}

const SYMBOL: Record<CheckStatus, string> = { ok: "✔", warn: "‼", fail: "✘" };

export function formatChecks(results: readonly CheckResult[]): string {
  const lines = results.map((result) => `${SYMBOL[result.status]} ${result.name}: ${result.message}`);
  const failed = results.filter((result) => result.status === "fail").length;
  lines.push(
    "",
    failed === 0 ? "Status check results are ✔" : `Status check results are ✘ (${failed} failed)`,
  );
  return `${lines.join("\n")}\n`;
}

export const checkCommand: Command = {
  name: "check",
  summary: "check this service's mesh setup: control plane, trust anchors, identity, policy, clock",
  usage,
  async run(argv: readonly string[], io: CliIo): Promise<number> {
    const { values, positionals } = parseArgs({
      args: [...argv],
      allowPositionals: true,
      strict: true,
      options: {
        output: { type: "string", short: "o", default: "text" },
        "env-file": { type: "string" },
        timeout: { type: "string", default: "10s" },
      },
    });
    if (positionals.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])}`);
    if (values.output !== "text" && values.output !== "json")
      throw new UsageError("--output must be text or json");
    const timeoutMs = parseDurationMs("--timeout", values.timeout);
    let env: Env = io.env ?? process.env;
    if (values["env-file"] !== undefined) {
      const file = path.resolve(io.cwd, values["env-file"]);
      env = { ...env, ...parseEnv(readFileSync(file, "utf8")) };
    }
    const results = await runChecks(env, { timeoutMs });
    const ok = results.every((result) => result.status !== "fail");
    io.stdout(
      values.output === "json"
        ? `${JSON.stringify({ ok, checks: results }, null, 2)}\n`
        : formatChecks(results),
    );
    return ok ? 0 : 1;
  },
};
