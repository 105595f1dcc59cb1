/**
 * Caps applied to everything the control plane sends. Messages are trusted more than peer traffic, but
 * a misconfigured or compromised controller must still not be able to exhaust memory or CPU.
 */
export const LIMITS = {
  /** Largest control-plane message decoded. */
  maxMessageBytes: 4 * 1024 * 1024,
  /** Endpoints kept per endpoint set; further new addresses are left out (and not converted). */
  maxEndpoints: 10_000,
  /** Metric labels kept per endpoint (set and address labels merged). */
  maxLabels: 64,
  maxLabelNameLength: 256,
  maxLabelValueLength: 1024,
  /** Profile routes and outbound routes per message. */
  maxRoutes: 1024,
  maxRulesPerRoute: 256,
  maxMatchesPerRule: 64,
  maxHeaderMatches: 64,
  maxHostsPerRoute: 256,
  maxFiltersPerRule: 64,
  maxBackends: 256,
  maxResponseClasses: 256,
  maxDstOverrides: 256,
  /** Nesting of ServiceProfile all/any/not conditions. */
  maxConditionDepth: 32,
  /** Nodes in one ServiceProfile condition tree. */
  maxConditionNodes: 1024,
  maxRegexLength: 4096,
  /** Regexes not compiled before that one outbound policy or profile may bring (each ~0.1 ms on RE2). */
  maxNewRegexesPerMessage: 1024,
  maxStatusRanges: 64,
  maxHeaderModifiers: 64,
} as const;
