#!/usr/bin/env bash
# Builds CoreDNS (the test cluster's DNS) from its Go module into its own cache directory outside
# the clone, keyed by version and by the hash of the committed go.sum and main.go, and prints the
# binary's path (`--cached`: exit 1, building nothing, when it is not cached). Kept apart from build-binaries.sh so that each cache survives the other's changes.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
version=$(sed -n 's/.*github.com\/coredns\/coredns \(v[0-9.]*\).*/\1/p' "$here/coredns/go.mod" | head -1)
key=$(cat "$here/coredns/go.sum" "$here/coredns/main.go" | sha256sum | cut -c1-12)
dir="${BRAID_CACHE:-/var/cache/braid}/coredns-${version}-${key}"
if [ ! -x "$dir/coredns" ]; then
  [ "${1:-}" = --cached ] && exit 1
  mkdir -p "$dir.tmp"
  start=$(date +%s)
  echo "building CoreDNS ${version} from its Go module (once; about 2 min on 2 cores)" >&2
  (while sleep 30; do echo "  still building CoreDNS: $(( $(date +%s) - start )) s" >&2; done) &
  ticker=$!
  trap 'kill $ticker 2>/dev/null || true' EXIT
  (cd "$here/coredns" && CGO_ENABLED=0 GOFLAGS=-mod=readonly GOTOOLCHAIN=local \
    go build -trimpath -ldflags "-s -w" -o "$dir.tmp/coredns" .) >&2
  echo "built coredns ${version} in $(( $(date +%s) - start )) s" >&2
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
fi
echo "$dir/coredns"
