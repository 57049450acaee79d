#!/usr/bin/env bash
# Starts etcd + kube-apiserver on loopback for tests; prints `export KUBECONFIG=...`.
# Usage: start-test-apiserver.sh start|stop   (RUN dir defaults to ./target/kas)
# Env: BIN (binaries), RUN (state dir), KAS_PORT, ETCD_PORT, ETCD_PEER_PORT, WITH_KCM=0|1.
# The tests (crates/control/tests/k8s.rs) pick free ports and a temp RUN per test binary.
set -euo pipefail
BIN="${BIN:-/var/cache/mesh-testbin/k8s-v1.20.2}"
RUN="${RUN:-$PWD/target/kas}"
PORT="${KAS_PORT:-16443}"; ETCD_PORT="${ETCD_PORT:-23790}"; ETCD_PEER_PORT="${ETCD_PEER_PORT:-$((ETCD_PORT+10))}"
case "${1:-start}" in
stop)
  for p in kcm kas etcd; do [ -f "$RUN/$p.pid" ] && kill "$(cat "$RUN/$p.pid")" 2>/dev/null || true; done; exit 0;;
esac
rm -rf "$RUN"; mkdir -p "$RUN/certs"
openssl genrsa -out "$RUN/sa.key" 2048 2>/dev/null
openssl rsa -in "$RUN/sa.key" -pubout -out "$RUN/sa.pub" 2>/dev/null
TOKEN="$(head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
echo "$TOKEN,test-admin,test-admin,system:masters" > "$RUN/tokens.csv"
"$BIN/etcd" --data-dir "$RUN/etcd" --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" \
  >"$RUN/etcd.log" 2>&1 & echo $! > "$RUN/etcd.pid"
"$BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$PORT" --insecure-port=0 \
  --cert-dir="$RUN/certs" --token-auth-file="$RUN/tokens.csv" --authorization-mode=RBAC \
  --service-cluster-ip-range=10.96.0.0/24 --endpoint-reconciler-type=none \
  --service-account-issuer=https://kubernetes.default.svc \
  --service-account-key-file="$RUN/sa.pub" --service-account-signing-key-file="$RUN/sa.key" \
  --disable-admission-plugins=ServiceAccount \
  >"$RUN/kas.log" 2>&1 & echo $! > "$RUN/kas.pid"
ready=0
for i in $(seq 1 120); do
  if curl -sfk -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$PORT/readyz" >/dev/null; then ready=1; break; fi
  kill -0 "$(cat "$RUN/kas.pid")" 2>/dev/null || break
  sleep 0.5
done
[ $ready = 1 ] || { echo "kube-apiserver did not become ready; see $RUN/kas.log" >&2; tail -20 "$RUN/kas.log" >&2; exit 1; }
# the serving cert file holds leaf + self-signed CA; keep the CA as the kubeconfig trust root
awk '/BEGIN CERT/{n++} n==2' "$RUN/certs/apiserver.crt" > "$RUN/ca.crt"
cat > "$RUN/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: "https://127.0.0.1:$PORT", certificate-authority: "$RUN/ca.crt"}}]
users: [{name: admin, user: {token: "$TOKEN"}}]
contexts: [{name: test, context: {cluster: test, user: admin}}]
current-context: test
KC
# optional: controllers that populate Endpoints/EndpointSlices, finish namespace deletion,
# garbage-collect ownerReferences, create "default" ServiceAccounts (no kubelet/scheduler needed)
if [ -x "$BIN/kube-controller-manager" ] && [ "${WITH_KCM:-1}" = 1 ]; then
  "$BIN/kube-controller-manager" --kubeconfig="$RUN/kubeconfig" --leader-elect=false \
    --service-account-private-key-file="$RUN/sa.key" --root-ca-file="$RUN/ca.crt" \
    --use-service-account-credentials=false --controllers='*,-nodelifecycle' \
    --bind-address=127.0.0.1 --port=0 --secure-port=0 >"$RUN/kcm.log" 2>&1 & echo $! > "$RUN/kcm.pid"
fi
echo "export KUBECONFIG=$RUN/kubeconfig"
