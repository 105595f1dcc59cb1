#!/usr/bin/env bash
# The whole test suite from a fresh clone: installs pnpm and the locked dependencies, builds, lints,
# type-checks, checks generated code, runs every test and the performance gates. This is the README's
# test command.
set -euo pipefail
cd "$(dirname "$0")/.."

PNPM_VERSION=10.34.8
if ! command -v pnpm >/dev/null 2>&1 || [ "$(pnpm --version)" != "$PNPM_VERSION" ]; then
  npm install --global --silent "pnpm@$PNPM_VERSION"
fi
bash scripts/install-system-tools.sh

pnpm install --frozen-lockfile
pnpm run build
pnpm run lint
pnpm run typecheck
pnpm run check:gen
pnpm run test
# Deterministic performance gates (callgrind instructions per request, allocations, heap growth).
pnpm run bench:gates
