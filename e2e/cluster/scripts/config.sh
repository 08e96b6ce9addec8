# Writes the configuration files of containerd, the CNI network, the kubelet, kube-proxy and
# CoreDNS into the state directory. Sourced by cluster-up.sh after lib.sh.

# has_capability BIT: whether this process's bounding set holds capability number BIT.
has_capability() {
  local bounding
  bounding=$(awk '/^CapBnd/ {print $2}' /proc/self/status)
  (( (16#$bounding >> $1) & 1 ))
}

write_configs() {
  cat >"$STATE_DIR/containerd.toml" <<EOF
version = 2
root = "$STATE_DIR/containerd"
state = "$RUN_DIR/containerd"
[grpc]
  address = "$CONTAINERD_SOCKET"
[ttrpc]
  address = "$RUN_DIR/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "braid.local/pause:1"
  # Without CAP_SYS_RESOURCE (missing from some sandboxes' bounding set) no process may lower an
  # OOM score below its own, and runc fails every pod; clamp to containerd's own score instead.
  restrict_oom_score_adj = $(has_capability 24 && echo false || echo true)
  # Pod network namespaces are mounted under the state directory (removed by cluster-down), not
  # in the host's /run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = $([ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] && [ -d /run/systemd/system ] && echo true || echo false)
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE_DIR/cni/net.d"
EOF

  cat >"$STATE_DIR/cni/net.d/10-braid.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "braid-pods",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$STATE_DIR/cni/ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

  cat >"$STATE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $STATE_DIR/pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $STATE_DIR/pki/kubelet-serving.crt
tlsPrivateKeyFile: $STATE_DIR/pki/kubelet-serving.key
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CONTAINERD_SOCKET
clusterDomain: cluster.local
clusterDNS: [$NODE_IP]
failSwapOn: false
readOnlyPort: 0
podCIDR: $NODE_POD_CIDR
# syncFrequency keeps the upstream default (1 min): the tests measure what users of a stock
# kubelet get. Braid's operator nudges the pods whose config it rewrote (operator/src/nudge.rs).
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: $STATE_DIR/resolv.conf
EOF
  # Pods resolve through CoreDNS on the node IP; nothing upstream is reachable, by design.
  printf 'nameserver %s\n' "$NODE_IP" >"$STATE_DIR/resolv.conf"

  cat >"$STATE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
clientConnection: {kubeconfig: $STATE_DIR/proxy.kubeconfig}
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF

  cat >"$STATE_DIR/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    kubernetes cluster.local in-addr.arpa {
        kubeconfig $STATE_DIR/coredns.kubeconfig braid
        pods insecure
        fallthrough in-addr.arpa
    }
    cache 5
}
EOF
}
