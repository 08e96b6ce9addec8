#!/usr/bin/env bash
# kubectl v1.34, version-matched with the test cluster (the `kubectl` of the cached multi-call
# binary), pointed at the test cluster unless KUBECONFIG is set.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
BIN=$("$here/build-binaries.sh") || exit 1
exec "$BIN/kube" kubectl --kubeconfig "${KUBECONFIG:-$KUBECONFIG_PATH}" "$@"
