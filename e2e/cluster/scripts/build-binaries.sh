#!/usr/bin/env bash
# Builds the test cluster's Kubernetes and etcd binaries from their Go modules into a cache
# directory outside the clone, keyed by version and by the hash of the committed go.sum files, and
# prints that directory. A second run with the same key builds nothing. `--cached`: exit 1,
# building nothing, when the binaries are not cached yet.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

key=$(cat "$here/kube/go.sum" "$here/etcd/go.sum" "$here/kube/main.go" "$here/etcd/main.go" | sha256sum | cut -c1-12)
bin="${BRAID_CACHE:-/var/cache/braid}/k8s-${KUBE_VERSION}-etcd-${ETCD_VERSION}-${key}"
if [ -x "$bin/kube" ] && [ -x "$bin/etcd" ]; then
  echo "$bin"
  exit 0
fi
[ "${1:-}" = --cached ] && exit 1
mkdir -p "$bin.tmp"
export CGO_ENABLED=0 GOFLAGS=-mod=readonly GOTOOLCHAIN=local
minor=$(echo "$KUBE_VERSION" | cut -d. -f2)
ld="-s -w -X k8s.io/component-base/version.gitVersion=${KUBE_VERSION}"
ld="$ld -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor}"
ld="$ld -X k8s.io/component-base/version.gitTreeState=clean"
ld="$ld -X k8s.io/client-go/pkg/version.gitVersion=${KUBE_VERSION}"
ld="$ld -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=${minor}"
start=$(date +%s)
echo "building Kubernetes ${KUBE_VERSION} and etcd ${ETCD_VERSION} from their Go modules (once; about 10 min on 2 cores)" >&2
# go build says nothing for minutes: a line every 30 s shows it is at work.
(while sleep 30; do echo "  still building Kubernetes and etcd: $(( $(date +%s) - start )) s" >&2; done) &
ticker=$!
trap 'kill $ticker 2>/dev/null || true' EXIT
(cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$bin.tmp/etcd" .) >&2
(cd "$here/kube" && go build -trimpath -ldflags "$ld" -o "$bin.tmp/kube" .) >&2
echo "built kube ${KUBE_VERSION} and etcd ${ETCD_VERSION} in $(( $(date +%s) - start )) s" >&2
rm -rf "$bin" && mv "$bin.tmp" "$bin"
echo "$bin"
