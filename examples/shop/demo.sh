#!/usr/bin/env bash
# The demo shop on a cluster where Braid is installed (`make demo` runs it after `make install`):
# deploys the shop in namespace `shop` (labelled for injection), applies the demo policies
# (STRICT mTLS, only order may charge a payment, LEAST_CONN towards inventory, a 80/20 payment
# canary), shows a refused call and where to look.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
KUBECTL=${KUBECTL:-kubectl}
k() { $KUBECTL "$@"; }

k apply -k "$here/deploy"
k apply -f "$here/deploy/policies.yaml"
for deployment in user order inventory-fast inventory-slow payment-v1 payment-v2 loadgen; do
  k rollout status -n shop "deployment/$deployment" --timeout=180s
done

echo
echo "\$ kubectl get pods -n shop"
k get pods -n shop
echo
# Ready means in effect on every proxy concerned: the operator reads each proxy's config back.
echo "\$ kubectl wait --for=condition=Ready meshpolicies,meshroutes --all -n shop"
k wait --for=condition=Ready meshpolicies,meshroutes --all -n shop --timeout=120s
echo
echo "\$ kubectl get meshpolicies,meshroutes -n shop"
k get meshpolicies,meshroutes -n shop
echo
echo "Only order may call payment: loadgen calling it directly is refused by payment's proxy:"
echo "\$ kubectl exec -n shop deploy/loadgen -- braid-shop get http://payment:8080/charge"
# The policy reaches payment's proxy within seconds of the shop's start; retry until it has.
for _ in $(seq 30); do
  if out=$(k exec -n shop deploy/loadgen -c loadgen -- braid-shop get http://payment:8080/charge 2>&1); then
    sleep 2
  else
    break
  fi
done
echo "$out"
echo
echo "Orders placed by the traffic generator (one summary every 10 s): payment splits 80/20, and"
echo "LEAST_CONN steers inventory calls away from the slow backend whenever requests overlap:"
sleep 22   # the first summary also counts orders placed while the shop was starting
echo "\$ kubectl logs -n shop deploy/loadgen -c loadgen --tail=1"
k logs -n shop deploy/loadgen -c loadgen --tail=1
cat <<'TEXT'

What to look at next:
  kubectl logs -n shop deploy/loadgen -f                  # where the orders go, every 10 s
  kubectl exec -n shop deploy/order -- braid-shop get http://127.0.0.1:15020/metrics
                                                          # the order pod's proxy: requests, latency
  kubectl edit meshroute -n shop payment-canary           # move the canary: try 0/100
  kubectl describe meshpolicy -n shop shop                # conditions and events
  kubectl rollout restart -n shop deployment/user         # a rolling update: no order fails
  kubectl patch -n shop deployment/payment-v2 -p \
    '{"spec":{"template":{"spec":{"containers":[{"name":"payment","args":["serve","--role","payment","--version","v2","--fail-percent","50"]}]}}}}'
                                                          # v2 fails half its calls: retried on v1
  kubectl exec -n shop deploy/payment-v1 -- braid-shop get http://127.0.0.1:15020/metrics \
    | grep authz                                          # allowed and denied calls, by rule
  kubectl delete namespace shop                           # remove the shop
TEXT
