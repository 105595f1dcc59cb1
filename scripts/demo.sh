#!/usr/bin/env bash
# The demo: sets up the workspace, then runs the scripted tour of the example services.
set -euo pipefail
cd "$(dirname "$0")/.."
PNPM_VERSION=10.34.8
if ! command -v pnpm >/dev/null 2>&1 || [ "$(pnpm --version)" != "$PNPM_VERSION" ]; then
  npm install --global --silent "pnpm@$PNPM_VERSION"
fi
pnpm install --frozen-lockfile
pnpm run build
exec node examples/demo/run.mjs
