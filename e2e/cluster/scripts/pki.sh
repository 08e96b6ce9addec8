# Creates the test cluster's PKI with openssl: one CA, serving and client certificates for every
# component, the service-account key, and a kubeconfig per client. Sourced by cluster-up.sh after
# lib.sh; does nothing for files that already exist.

# issue_cert NAME SUBJECT EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES]
issue_cert() {
  local name=$1 subject=$2 usage=$3 sans=${4:-} dir=$STATE_DIR/pki ext
  [ -f "$dir/$name.crt" ] && return 0
  ext="basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=$usage"
  [ -n "$sans" ] && ext="$ext\nsubjectAltName=$sans"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$dir/$name.key" \
    -subj "$subject" 2>/dev/null |
    openssl x509 -req -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 365 \
      -out "$dir/$name.crt" -extfile <(printf "$ext") 2>/dev/null
}

# write_kubeconfig NAME SERVER: a kubeconfig for the client certificate NAME.
write_kubeconfig() {
  local name=$1 server=$2 dir=$STATE_DIR/pki
  cat >"$STATE_DIR/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: braid
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 "$dir/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 "$dir/$name.crt")
    client-key-data: $(base64 -w0 "$dir/$name.key")
contexts:
- name: braid
  context: {cluster: braid, user: $name}
current-context: braid
EOF
}

make_pki() {
  local dir=$STATE_DIR/pki in_cluster_url="https://$NODE_IP:$API_PORT"
  mkdir -p "$dir" && chmod 700 "$dir"
  if [ ! -f "$dir/ca.crt" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -keyout "$dir/ca.key" -out "$dir/ca.crt" -subj /CN=braid-test-cluster-ca 2>/dev/null
  fi
  [ -f "$dir/sa.key" ] || openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
  [ -f "$dir/sa.pub" ] || openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
  local api_sans="IP:$NODE_IP,IP:$CLUSTER_VETH_IP,IP:127.0.0.1,IP:$KUBERNETES_SERVICE_IP,DNS:localhost"
  api_sans="$api_sans,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
  api_sans="$api_sans,DNS:kubernetes.default.svc.cluster.local"
  issue_cert apiserver /CN=kube-apiserver serverAuth "$api_sans"
  issue_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  issue_cert kubelet-serving "/CN=$NODE_NAME" serverAuth "IP:$NODE_IP,DNS:$NODE_NAME"
  issue_cert admin "/O=system:masters/CN=braid-admin" clientAuth
  issue_cert controller-manager /CN=system:kube-controller-manager clientAuth
  issue_cert scheduler /CN=system:kube-scheduler clientAuth
  issue_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
  issue_cert proxy /CN=system:kube-proxy clientAuth
  issue_cert coredns /CN=braid:coredns clientAuth
  # The user's kubeconfig goes through the veth from the host; the components' stay inside.
  write_kubeconfig admin "https://$CLUSTER_VETH_IP:$API_PORT"
  mv "$STATE_DIR/admin.kubeconfig" "$KUBECONFIG_PATH"
  for client in controller-manager scheduler kubelet proxy coredns; do
    write_kubeconfig "$client" "$in_cluster_url"
  done
}
