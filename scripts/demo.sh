#!/usr/bin/env bash
# make demo: build, start hopgate-server (debug, embedded store), a demo target and hopgate-client on
# loopback, register two domains through the admin API, run ONE agent from a config file that
# publishes three services (two hostnames, one path rule), send requests through it, stop everything.
set -euo pipefail
cd "$(dirname "$0")/.."

HTTPS_PORT=${DEMO_HTTPS_PORT:-18443}
HTTP_PORT=${DEMO_HTTP_PORT:-18081}
TARGET_PORT=${DEMO_TARGET_PORT:-18080}
ADMIN_KEY=demo-admin-key-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
DOMAIN=demo.localhost.test
DOCS=docs.localhost.test
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

DOCS_KEY=$(api -X POST -d "{\"domain\":\"$DOCS\"}" "https://localhost:$HTTPS_PORT/api/v1/admin/domains/register" | sed -E 's/.*"client_api_key":"([^"]+)".*/\1/')

# The targets' base paths (/api-backend, /docs-site) show in the answers which service a request took.
cat >"$WORK/hopgate.yaml" <<YAML
server_addr: localhost:$HTTPS_PORT
ca_file: data/selfsigned/cert.pem     # relative to this file
services:
  - hostname: $DOMAIN
    api_key: \${DEMO_KEY}
    target: 127.0.0.1:$TARGET_PORT
  - hostname: $DOMAIN
    path: /api/
    target: http://127.0.0.1:$TARGET_PORT/api-backend
  - hostname: $DOCS
    api_key: \${DOCS_KEY}
    target: http://127.0.0.1:$TARGET_PORT/docs-site
YAML
echo "demo: starting ONE hopgate-client with $WORK/hopgate.yaml: $DOMAIN (/ and /api/) and $DOCS"
DEMO_KEY="$KEY" DOCS_KEY="$DOCS_KEY" bin/hopgate-client --config "$WORK/hopgate.yaml" >"$WORK/client.log" 2>&1 &
PIDS+=($!)
agents() { api "https://localhost:$HTTPS_PORT/api/v1/admin/domains/status?domain=$1" | sed -E 's/.*"agents":([0-9]+).*/\1/'; }
for _ in $(seq 1 100); do
  [ "$(agents "$DOMAIN")" != "0" ] && [ "$(agents "$DOCS")" != "0" ] && break
  sleep 0.1
done
echo "  agents: $DOMAIN $(agents "$DOMAIN"), $DOCS $(agents "$DOCS") (one agent, one connection)"
grep 'tunnel up' "$WORK/client.log" | sed 's/^/  client: /'
path_of() { curl -sS --cacert "$WORK/data/selfsigned/cert.pem" --resolve "$1:$HTTPS_PORT:127.0.0.1" "https://$1:$HTTPS_PORT$2" | sed -E 's/.*"path":"([^"]*)".*/\1/'; }
echo; echo "demo: three services, one agent (the path the target saw):"
echo "  https://$DOMAIN/hello      -> $(path_of "$DOMAIN" /hello)"
echo "  https://$DOMAIN/api/users  -> $(path_of "$DOMAIN" /api/users)"
echo "  https://$DOCS/intro       -> $(path_of "$DOCS" /intro)"

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
