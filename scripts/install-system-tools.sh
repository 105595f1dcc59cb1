#!/usr/bin/env bash
# Tests talk to real peers: openssl (s_client, verify), curl, nginx (a stand-in for a sidecar inbound), and
# Prometheus' promtool (checks /metrics); the performance gates count instructions with valgrind (callgrind).
# Install them from Debian when missing.
set -euo pipefail
missing=()
for tool in openssl curl nginx valgrind; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
# promtool ships in Debian's prometheus package.
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing tools: ${missing[*]}; install them and rerun" >&2
    exit 1
  fi
fi
