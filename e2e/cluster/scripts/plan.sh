#!/usr/bin/env bash
# Says what `make demo` is about to build and how long that usually takes on 2 cores, before it
# starts: a first run builds everything, a second one only what changed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
say() { printf '[demo] %s\n' "$*"; }
say "What happens now (timings measured on 2 cores; README.md, \"How long it takes\"):"
if [ -x "$repo/target/release/braid-proxy" ]; then
  say "  Braid's release binaries: rebuilt only if the sources changed (seconds to 2 min)"
else
  say "  Braid's release binaries: first build, about 6 to 11 min (cargo prints each crate it compiles)"
fi
if "$here/build-binaries.sh" --cached >/dev/null 2>&1; then
  say "  Kubernetes and etcd: cached"
else
  say "  Kubernetes and etcd from their Go modules: once, about 6 to 10 min (a line every 30 s)"
fi
if "$here/build-coredns.sh" --cached >/dev/null 2>&1; then
  say "  CoreDNS: cached"
else
  say "  CoreDNS from its Go module: once, about 1 to 2 min"
fi
say "  then the cluster, Braid and the shop: about 1 min"
