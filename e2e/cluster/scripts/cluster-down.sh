#!/usr/bin/env bash
# Stops Braid's test cluster and removes everything cluster-up.sh made: processes (by recorded PID),
# containers, mounts, network namespaces, interfaces, routes, iptables rules and cgroups. Idempotent.
# With --purge it also deletes the state directory (PKI, etcd data, logs).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

# stop_pid NAME: SIGTERM, up to 10 s of grace, then SIGKILL.
stop_pid() {
  local file=$STATE_DIR/pids/$1.pid pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null && log "killed $1 (pid $pid)" || log "stopped $1 (pid $pid)"
  fi
  rm -f "$file"
}

# Kubelet first so it restarts nothing, then every container through containerd, then the rest.
stop_pid proxy
stop_pid coredns
stop_pid kubelet
if pid_alive containerd; then
  ctr=(ctr --address "$CONTAINERD_SOCKET" -n k8s.io)
  for task in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
    "${ctr[@]}" tasks kill -s SIGKILL "$task" >/dev/null 2>&1
  done
  sleep 1
  for task in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks delete -f "$task" >/dev/null 2>&1; done
  for container in $("${ctr[@]}" containers ls -q 2>/dev/null); do
    "${ctr[@]}" containers delete "$container" >/dev/null 2>&1
  done
fi
for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do stop_pid "${COMPONENTS[i]}"; done
# Shims outlive containerd by design; ours are the ones that talk to our socket.
pkill -KILL -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCKET" 2>/dev/null

# Mounts: pod volumes, overlay snapshots, pod network namespaces, all below our two directories.
for dir in "$STATE_DIR" "$RUN_DIR"; do
  awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r mount; do
    umount "$mount" 2>/dev/null || umount -l "$mount"
  done
done

# Network: deleting the namespace removes the bridge, the veths and every iptables rule in it.
if [ -e "/run/netns/$CLUSTER_NETNS" ]; then
  ip netns delete "$CLUSTER_NETNS" && log "deleted network namespace $CLUSTER_NETNS"
fi
ip link delete "$HOST_VETH" 2>/dev/null
for cidr in "$POD_CIDR" "$SERVICE_CIDR"; do ip route delete unreachable "$cidr" 2>/dev/null; done

# cgroups the kubelet made for pods, deepest first (they are empty once the processes are gone).
for root in /sys/fs/cgroup/*/; do
  [ -d "$root/kubepods" ] && find "$root/kubepods" -depth -type d -exec rmdir {} + 2>/dev/null
done

rm -rf "$RUN_DIR" "$STATE_DIR/pids"
if [ "${1:-}" = --purge ]; then
  rm -rf "$STATE_DIR"
  log "removed $STATE_DIR"
fi
log "cluster down"
