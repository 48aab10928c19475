#!/usr/bin/env bash
# make demo: build, start hopgate-server (debug, embedded store), a demo target and hopgate-client on
# loopback, register a domain through the admin API, send requests through the tunnel, stop everything.
set -euo pipefail
cd "$(dirname "$0")/.."

HTTPS_PORT=${DEMO_HTTPS_PORT:-18443}
HTTP_PORT=${DEMO_HTTP_PORT:-18081}
TARGET_PORT=${DEMO_TARGET_PORT:-18080}
ADMIN_KEY=demo-admin-key-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
DOMAIN=demo.localhost.test
WORK=.demo
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "demo: stopped everything (logs in $WORK/)"
}
trap cleanup EXIT INT TERM

command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }

echo "demo: building"
make -s build
CGO_ENABLED=0 go build -o bin/hopgate-demo-target ./cmd/hopgate-demo-target
rm -rf "$WORK"; mkdir -p "$WORK"

echo "demo: starting the demo target on 127.0.0.1:$TARGET_PORT"
bin/hopgate-demo-target --listen "127.0.0.1:$TARGET_PORT" >"$WORK/target.log" 2>&1 &
PIDS+=($!)

echo "demo: starting hopgate-server (debug) on https://127.0.0.1:$HTTPS_PORT"
HOP_SERVER_DEBUG=true HOP_SERVER_DOMAIN=localhost HOP_ADMIN_API_KEY="$ADMIN_KEY" \
HOP_SERVER_HTTPS_LISTEN="127.0.0.1:$HTTPS_PORT" HOP_SERVER_HTTP_LISTEN="127.0.0.1:$HTTP_PORT" \
HOP_SERVER_METRICS_LISTEN= HOP_DATA_DIR="$WORK/data" \
  bin/hopgate-server >"$WORK/server.log" 2>&1 &
PIDS+=($!)

api() { curl -sS --cacert "$WORK/data/selfsigned/cert.pem" -H "Authorization: Bearer $ADMIN_KEY" "$@"; }
for _ in $(seq 1 100); do
  [ -f "$WORK/data/selfsigned/cert.pem" ] && api "https://localhost:$HTTPS_PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
echo "demo: gateway health: $(api "https://localhost:$HTTPS_PORT/healthz")"

echo "demo: registering $DOMAIN through the admin API"
REG=$(api -X POST -d "{\"domain\":\"$DOMAIN\",\"memo\":\"make demo\"}" "https://localhost:$HTTPS_PORT/api/v1/admin/domains/register")
echo "  $REG" | sed -E 's/"client_api_key":"[^"]+"/"client_api_key":"(shown once, hidden here)"/'
KEY=$(printf '%s' "$REG" | sed -E 's/.*"client_api_key":"([^"]+)".*/\1/')

echo "demo: starting hopgate-client for $DOMAIN -> 127.0.0.1:$TARGET_PORT"
HOP_CLIENT_API_KEY="$KEY" bin/hopgate-client --server-addr "localhost:$HTTPS_PORT" --domain "$DOMAIN" \
  --ca-file "$WORK/data/selfsigned/cert.pem" --local-target "127.0.0.1:$TARGET_PORT" >"$WORK/client.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
  [ "$(api "https://localhost:$HTTPS_PORT/api/v1/admin/domains/status?domain=$DOMAIN" | sed -E 's/.*"agents":([0-9]+).*/\1/')" != "0" ] && break
  sleep 0.1
done
grep -m1 'tunnel up' "$WORK/client.log" | sed 's/^/  client: /'

PUB=(--cacert "$WORK/data/selfsigned/cert.pem" --resolve "$DOMAIN:$HTTPS_PORT:127.0.0.1")
echo; echo "demo: GET https://$DOMAIN:$HTTPS_PORT/hello?from=demo  (through the tunnel)"
curl -sS "${PUB[@]}" "https://$DOMAIN:$HTTPS_PORT/hello?from=demo"
echo; echo "demo: POST 8 MiB to /upload (streamed through the tunnel)"
head -c 8388608 /dev/urandom >"$WORK/upload.bin"
echo "  local : $(stat -c %s "$WORK/upload.bin") $(sha256sum "$WORK/upload.bin" | cut -d' ' -f1)"
echo "  target: $(curl -sS "${PUB[@]}" --data-binary @"$WORK/upload.bin" "https://$DOMAIN:$HTTPS_PORT/upload")"
echo; echo "demo: GET /bytes/104857600 (100 MiB download)"
curl -sS "${PUB[@]}" -o /dev/null -w '  %{size_download} bytes in %{time_total}s (%{speed_download} B/s)\n' "https://$DOMAIN:$HTTPS_PORT/bytes/104857600"
echo; echo "demo: GET /events (server-sent events arrive as they are written)"
curl -sSN "${PUB[@]}" "https://$DOMAIN:$HTTPS_PORT/events" | sed 's/^/  /'
api -X POST -d '{"domain":"idle.localhost.test"}' "https://localhost:$HTTPS_PORT/api/v1/admin/domains/register" >/dev/null
status_of() { curl -sS -o /dev/null -w '%{http_code}' --cacert "$WORK/data/selfsigned/cert.pem" --resolve "$1:$HTTPS_PORT:127.0.0.1" "https://$1:$HTTPS_PORT/"; }
echo "demo: an unknown domain gets $(status_of nobody.localhost.test), a registered one without an agent $(status_of idle.localhost.test)"
echo; echo "demo: done. The gateway, client and target stop now."
