#!/usr/bin/env bash
# Image handling for the test cluster, without Docker.
#   images.sh pause        builds the pod sandbox image archive from e2e/cluster/pause/pause.c
#   images.sh pack NAME:TAG BINARY...   packs binaries into an archive in the images directory
#   images.sh import       imports every archive of the images directory into containerd (k8s.io)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
repo=$(cd "$here/../../.." && pwd)
IMAGES_DIR=${BRAID_IMAGES_DIR:-$repo/target/images}
mkdir -p "$IMAGES_DIR"

case ${1:-} in
  pause)
    out=$IMAGES_DIR/pause.tar
    if [ ! -f "$out" ] || [ "$here/../pause/pause.c" -nt "$out" ]; then
      work=$(mktemp -d)
      cc -O2 -static -o "$work/pause" "$here/../pause/pause.c"
      "$here/oci-pack.py" braid.local/pause:1 "$out" "$work/pause" >&2
      rm -rf "$work"
    fi
    ;;
  pack)
    [ $# -ge 3 ] || die "usage: images.sh pack NAME:TAG BINARY..."
    name=$2
    shift 2
    file=$(echo "${name#*/}" | tr ':/' '--').tar
    # Release binaries keep line tables (for backtraces on this machine); the image gets a copy
    # without debug information. The debug information is kept beside the archives
    # (debug/<binary>.debug, which the stripped binary names by GNU debuglink) to symbolize a
    # crash report.
    work=$(mktemp -d)
    args=()
    for arg in "$@"; do
      if [[ $arg == --* ]]; then args+=("$arg"); continue; fi
      base=$(basename "$arg")
      mkdir -p "$IMAGES_DIR/debug"
      objcopy --only-keep-debug "$arg" "$IMAGES_DIR/debug/$base.debug"
      objcopy --strip-debug --add-gnu-debuglink="$IMAGES_DIR/debug/$base.debug" "$arg" "$work/$base"
      args+=("$work/$base")
      log "$base: $(( $(stat -c %s "$arg") / 1024 )) KiB built, $(( $(stat -c %s "$work/$base") / 1024 )) KiB in the image"
    done
    "$here/oci-pack.py" "$name" "$IMAGES_DIR/$file" "${args[@]}"
    rm -rf "$work"
    ;;
  import)
    for archive in "$IMAGES_DIR"/*.tar; do
      [ -f "$archive" ] || continue
      ctr --address "$CONTAINERD_SOCKET" -n k8s.io images import "$archive" >/dev/null \
        || die "importing $archive failed"
      log "imported $(basename "$archive")"
    done
    ;;
  *) die "usage: images.sh pause|pack|import" ;;
esac
