# Shared settings and helpers of cluster-up.sh and cluster-down.sh. Sourced, not run.
#
# The whole cluster (containerd, etcd, the Kubernetes components and every pod) lives in one network
# namespace, `braid-cluster`. The host reaches the API server through one veth pair; nothing in the
# namespace has a route off the machine, so no packet of the cluster can leave it.

CLUSTER_NETNS=braid-cluster
NODE_NAME=braid-node
# The state directory holds PKI, etcd data, logs and PID files; the run directory holds sockets.
STATE_DIR=${BRAID_CLUSTER_DIR:-/var/lib/braid-cluster}
RUN_DIR=/run/braid-cluster
# Host side and cluster side of the veth pair the host uses to reach the API server.
HOST_VETH=braid-host
HOST_VETH_IP=10.243.0.1
CLUSTER_VETH=braid-uplink
CLUSTER_VETH_IP=10.243.0.2
# The pod bridge. Its address is the node's IP and the API server's advertised address.
BRIDGE=braid0
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/16
NODE_POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SERVICE_IP=10.96.0.1
DNS_SERVICE_IP=10.96.0.10
API_PORT=6443
KUBECONFIG_PATH=$STATE_DIR/kubeconfig
CONTAINERD_SOCKET=$RUN_DIR/containerd.sock

log() { printf '[cluster %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Runs a command inside the cluster's network namespace. nsenter (not `ip netns exec`) keeps the
# host's mount namespace, so that the kubelet's volume mounts are visible to containerd.
in_cluster() { nsenter --net="/run/netns/$CLUSTER_NETNS" -- "$@"; }

pid_alive() { [ -f "$STATE_DIR/pids/$1.pid" ] && kill -0 "$(cat "$STATE_DIR/pids/$1.pid")" 2>/dev/null; }

# The components in start order; cluster-down stops them in reverse.
COMPONENTS=(containerd etcd apiserver controller-manager scheduler kubelet proxy coredns)
