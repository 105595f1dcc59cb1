import type { ManifestProblem } from "../model/index.js";

/** `file:line (document N) Kind/name field: message`, one line per problem, for terminals and logs. */
export function formatManifestProblem(problem: ManifestProblem): string {
  const where = `${problem.file}${problem.line === undefined ? "" : `:${problem.line}`} (document ${problem.document})`;
  const what =
    problem.kind === undefined
      ? ""
      : ` ${problem.kind}${problem.name === undefined ? "" : `/${problem.name}`}`;
  const field = problem.field === undefined ? "" : ` ${problem.field}:`;
  return `${where}${what}${field} ${problem.message}`;
}
