#!/usr/bin/env bash
# Brings up Braid's single-node test cluster and prints the kubeconfig path. Idempotent: a running
# component is left alone, a missing one is started. See e2e/README.md for what runs where.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/pki.sh"
. "$here/config.sh"

[ "$(id -u)" = 0 ] || die "the test cluster needs root (network namespaces, mounts, cgroups)"
for tool in containerd containerd-shim-runc-v2 runc ctr iptables conntrack openssl curl nsenter; do
  command -v "$tool" >/dev/null || die "$tool is missing: run 'make cluster-deps' (Debian packages)"
done
[ -x /usr/lib/cni/bridge ] || die "CNI plugins missing: run 'make cluster-deps'"

started=$(date +%s)
BIN=$("$here/build-binaries.sh")
COREDNS=$("$here/build-coredns.sh")
log "binaries: $BIN, $COREDNS"
mkdir -p "$STATE_DIR"/{pids,logs,etcd,kubelet,cni/net.d,cni/ipam} "$RUN_DIR"

# Network: the cluster's namespace, the veth to the host, the pod bridge, and routes that make any
# packet no rule handles die on this machine.
setup_network() {
  if [ ! -e "/run/netns/$CLUSTER_NETNS" ]; then
    ip netns add "$CLUSTER_NETNS"
  fi
  if ! ip link show "$HOST_VETH" >/dev/null 2>&1; then
    ip link add "$HOST_VETH" type veth peer name "$CLUSTER_VETH" netns "$CLUSTER_NETNS"
    ip addr add "$HOST_VETH_IP/30" dev "$HOST_VETH"
    ip link set "$HOST_VETH" up
    in_cluster ip addr add "$CLUSTER_VETH_IP/30" dev "$CLUSTER_VETH"
    in_cluster ip link set "$CLUSTER_VETH" up
  fi
  in_cluster ip link set lo up
  if ! in_cluster ip link show "$BRIDGE" >/dev/null 2>&1; then
    in_cluster ip link add "$BRIDGE" type bridge
    in_cluster ip addr add "$NODE_IP/24" dev "$BRIDGE"
    in_cluster ip link set "$BRIDGE" up
  fi
  # A fixed MAC: a bridge without one takes the lowest of its ports' and changes when that pod's
  # veth goes, and every pod's ARP entry for the node (their gateway and DNS server) points
  # nowhere until it expires: DNS queries lost for seconds during rollouts (kubernetes#30783).
  # The CNI bridge plugin sets the same, 0a:58 and the IPv4 address, on a bridge it creates.
  in_cluster ip link set "$BRIDGE" address "$(printf '0a:58:%02x:%02x:%02x:%02x' ${NODE_IP//./ })"
  for cidr in "$POD_CIDR" "$SERVICE_CIDR"; do
    in_cluster ip route replace unreachable "$cidr"
    ip route replace unreachable "$cidr"
  done
  in_cluster sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 \
    net.ipv4.conf.all.route_localnet=1
}

# mount_cgroup_controllers: the kubelet and runc expect every cgroup v1 controller the kernel has.
mount_cgroup_controllers() {
  [ "$(stat -fc %T /sys/fs/cgroup)" = tmpfs ] || return 0
  local name hierarchy
  while read -r name hierarchy _; do
    case $name in \#*) continue ;; esac
    if [ "$hierarchy" = 0 ] && [ ! -d "/sys/fs/cgroup/$name" ]; then
      mkdir -p "/sys/fs/cgroup/$name" && mount -t cgroup -o "$name" cgroup "/sys/fs/cgroup/$name" || true
    fi
  done </proc/cgroups
}

# start NAME COMMAND...: runs COMMAND in the cluster namespace in the background, logging to
# logs/NAME.log and recording its PID, unless it already runs.
start() {
  local name=$1
  shift
  if pid_alive "$name"; then
    return 0
  fi
  setsid nsenter --net="/run/netns/$CLUSTER_NETNS" -- "$@" >"$STATE_DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE_DIR/pids/$name.pid"
  log "started $name (pid $!)"
}

# wait_for WHAT SECONDS COMMAND...: retries COMMAND until it succeeds.
wait_for() {
  local what=$1 seconds=$2
  shift 2
  for _ in $(seq $((seconds * 2))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  die "$what not ready after ${seconds}s (logs in $STATE_DIR/logs)"
}

kubectl_admin() { "$BIN/kube" kubectl --kubeconfig "$KUBECONFIG_PATH" "$@"; }

setup_network
mount_cgroup_controllers
make_pki
write_configs
"$here/images.sh" pause

start containerd containerd --config "$STATE_DIR/containerd.toml"
wait_for containerd 30 ctr --address "$CONTAINERD_SOCKET" version
"$here/images.sh" import

start etcd "$BIN/etcd" --name=braid --data-dir="$STATE_DIR/etcd" \
  --listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
  --listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
  --initial-cluster=braid=http://127.0.0.1:2380 --unsafe-no-fsync=true --log-level=warn \
  --quota-backend-bytes=8589934592 --auto-compaction-mode=periodic --auto-compaction-retention=1m
wait_for etcd 30 in_cluster curl -fsS http://127.0.0.1:2379/health

pki=$STATE_DIR/pki
start apiserver "$BIN/kube" apiserver --etcd-servers=http://127.0.0.1:2379 \
  --bind-address=0.0.0.0 --secure-port="$API_PORT" --advertise-address="$NODE_IP" \
  --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --client-ca-file="$pki/ca.crt" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" --authorization-mode=Node,RBAC \
  --enable-admission-plugins=NodeRestriction --allow-privileged=true \
  --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$pki/ca.crt" --kubelet-preferred-address-types=InternalIP \
  --enable-aggregator-routing=true --profiling=false --v=1
wait_for "kube-apiserver /readyz" 90 curl -fsS --cacert "$pki/ca.crt" --cert "$pki/apiserver-kubelet-client.crt" \
  --key "$pki/apiserver-kubelet-client.key" "https://$CLUSTER_VETH_IP:$API_PORT/readyz"

start controller-manager "$BIN/kube" controller-manager --kubeconfig="$STATE_DIR/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$STATE_DIR/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$STATE_DIR/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
  --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
  --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
  --allocate-node-cidrs=false --controllers='*' --v=1
start scheduler "$BIN/kube" scheduler --kubeconfig="$STATE_DIR/scheduler.kubeconfig" \
  --authentication-kubeconfig="$STATE_DIR/scheduler.kubeconfig" \
  --authorization-kubeconfig="$STATE_DIR/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false --v=1
start kubelet "$BIN/kube" kubelet --config="$STATE_DIR/kubelet.yaml" \
  --kubeconfig="$STATE_DIR/kubelet.kubeconfig" --hostname-override="$NODE_NAME" \
  --node-ip="$NODE_IP" --root-dir="$STATE_DIR/kubelet" --v=1
start proxy "$BIN/kube" proxy --config="$STATE_DIR/kube-proxy.yaml" --v=1
kubectl_admin apply -f "$here/../manifests/coredns-rbac.yaml" >/dev/null
start coredns "$COREDNS" -conf "$STATE_DIR/Corefile"

wait_for "node $NODE_NAME Ready" 120 kubectl_admin wait --for=condition=Ready "node/$NODE_NAME" --timeout=1s
# The default ServiceAccount is what every test pod runs as; wait for the controller to make it.
wait_for "default ServiceAccount" 60 kubectl_admin get serviceaccount default -n default
log "node $NODE_NAME Ready in $(($(date +%s) - started)) s"
echo "$KUBECONFIG_PATH"
