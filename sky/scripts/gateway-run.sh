#!/usr/bin/env bash
# Runs vllm-gateway with its keys and limits in Redis, configured from the
# task's variables: they become the gateway's VGW_* settings (lists as JSON,
# which the gateway reads as YAML; other values as their exact text), so no
# settings file with secrets is written anywhere. Any other VGW_* variable
# passes through as it is.
#
#   MODEL_NAME            the model clients ask for: vLLM's served model name
#   DISCOVERY             cluster: the vLLM cluster VLLM_CLUSTER, port UPSTREAM_PORT
#                         service: the SkyServe service VLLM_SERVICE (SERVE_MODE
#                                  replicas: each READY replica; service: its load balancer)
#                         static:  the replicas in UPSTREAM_URLS (space-separated)
#   GATEWAY_PORT          the port the gateway listens on (0.0.0.0)
#   GATEWAY_WORKERS       gateway processes sharing the port (they share Redis)
#   REDIS_URL (secret)    a shared Redis; empty: a local redis-server on REDIS_PORT,
#                         its append-only file in GATEWAY_DATA/redis/<cluster name>
#                         (on the volume; the name is SkyPilot's, or GATEWAY_CLUSTER)
#   GATEWAY_PEPPER, GATEWAY_ADMIN_TOKEN, VLLM_API_KEY (secrets): required
#   SKYPILOT_API_SERVER_ENDPOINT, SKYPILOT_SERVICE_ACCOUNT_TOKEN (secrets): the
#                         SkyPilot API server discovery asks; required for
#                         cluster and service discovery
set -euo pipefail
SCRIPT=gateway-run
# shellcheck source=sky/scripts/common.sh
source "$(dirname "$0")/common.sh"

MODEL_NAME="${MODEL_NAME:-Qwen/Qwen2.5-7B-Instruct}"
DISCOVERY="${DISCOVERY:-cluster}"
GATEWAY_PORT="${GATEWAY_PORT:-8080}"
GATEWAY_WORKERS="${GATEWAY_WORKERS:-2}"
GATEWAY_DATA="${GATEWAY_DATA:-/model-weights/gateway}"
REDIS_PORT="${REDIS_PORT:-6379}"
export MODEL_NAME DISCOVERY GATEWAY_PORT GATEWAY_WORKERS
export VLLM_CLUSTER="${VLLM_CLUSTER:-vllm}" UPSTREAM_PORT="${UPSTREAM_PORT:-8000}"
export VLLM_SERVICE="${VLLM_SERVICE:-vllm-svc}" SERVE_MODE="${SERVE_MODE:-replicas}"
export UPSTREAM_URLS="${UPSTREAM_URLS:-}"

check_settings() {
  local name
  for name in GATEWAY_PEPPER GATEWAY_ADMIN_TOKEN VLLM_API_KEY; do
    [ -n "${!name:-}" ] || die "$name is empty: pass it as a secret (--secret $name)"
  done
  require_int GATEWAY_PORT 1
  require_int GATEWAY_WORKERS 1
  require_int REDIS_PORT 1
  case "$DISCOVERY" in
    cluster | service)
      [ -n "${SKYPILOT_API_SERVER_ENDPOINT:-}" ] ||
        die "DISCOVERY=$DISCOVERY asks SkyPilot's API server, and a SkyPilot node has" \
          "none of its own: pass --secret SKYPILOT_API_SERVER_ENDPOINT (and" \
          "SKYPILOT_SERVICE_ACCOUNT_TOKEN), or use DISCOVERY=static with UPSTREAM_URLS"
      ;;
    static) [ -n "$UPSTREAM_URLS" ] || die "DISCOVERY=static needs UPSTREAM_URLS" ;;
    *) die "DISCOVERY must be cluster, service or static, not '$DISCOVERY'" ;;
  esac
  # An empty token is not a token: let the SDK go without one.
  [ -n "${SKYPILOT_SERVICE_ACCOUNT_TOKEN:-}" ] || unset SKYPILOT_SERVICE_ACCOUNT_TOKEN
  [ -n "${SKYPILOT_API_SERVER_ENDPOINT:-}" ] || unset SKYPILOT_API_SERVER_ENDPOINT
}

# This cluster's name: SkyPilot describes the cluster in SKYPILOT_CLUSTER_INFO (JSON).
cluster_name() {
  if [ -n "${GATEWAY_CLUSTER:-}" ]; then
    echo "$GATEWAY_CLUSTER"
    return
  fi
  python3 -c 'import json, os; print(json.loads(os.environ["SKYPILOT_CLUSTER_INFO"]).get(
    "cluster_name", ""))' 2>/dev/null || true
}

start_redis() {
  local cluster dir
  cluster="$(cluster_name)"
  [ -n "$cluster" ] ||
    die "cannot tell this cluster's name (no SKYPILOT_CLUSTER_INFO): set GATEWAY_CLUSTER"
  # The volume is shared by every cluster that mounts it: one directory per gateway
  # cluster, since two redis-servers appending to one file corrupt it and two gateway
  # clusters on one store would share keys nobody meant to share. The lock (held by
  # redis-server too, through fd 9) refuses a second server on the same directory.
  dir="$GATEWAY_DATA/redis/$cluster"
  mkdir -p "$dir"
  exec 9>"$dir/.lock"
  if command -v flock >/dev/null; then
    flock -n 9 || die "another redis-server uses $dir: is a cluster named $cluster running?"
  fi
  log "starting redis-server on 127.0.0.1:$REDIS_PORT, append-only file in $dir"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$dir" \
    --appendonly yes --save "" --logfile "" &
  redis_pid=$!
  wait_for_port 127.0.0.1 "$REDIS_PORT" 60
  # Something else may hold the port: the server must be ours, and alive.
  sleep 0.5
  kill -0 "$redis_pid" 2>/dev/null || die "redis-server exited: is port $REDIS_PORT taken?"
  export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
}

# The settings, one VGW_NAME=value line each.
gateway_settings() {
  python3 - <<'EOF'
import json
import os

env = os.environ
model = {"name": env["MODEL_NAME"], "api_key": env["VLLM_API_KEY"]}
if env["DISCOVERY"] == "cluster":
    cluster = {"cluster": env["VLLM_CLUSTER"], "port": int(env["UPSTREAM_PORT"])}
    model["discovery"] = [{"skypilot_cluster": cluster}]
elif env["DISCOVERY"] == "service":
    service = {"service": env["VLLM_SERVICE"], "mode": env["SERVE_MODE"]}
    model["discovery"] = [{"skyserve": service}]
else:
    model["replicas"] = [{"url": url} for url in env["UPSTREAM_URLS"].split()]
settings = {
    "LISTEN__HOST": "0.0.0.0",
    "LISTEN__PORT": int(env["GATEWAY_PORT"]),
    "WORKERS": int(env["GATEWAY_WORKERS"]),
    "MODELS": [model],
    "AUTH__PEPPER": env["GATEWAY_PEPPER"],
    "AUTH__KEY_STORE__BACKEND": "redis",
    "AUTH__KEY_STORE__REDIS_URL": env["REDIS_URL"],
    "LIMITS__BACKEND": "redis",
    "ADMIN__TOKENS": [env["GATEWAY_ADMIN_TOKEN"]],
}
for name, value in settings.items():
    # Lists and mappings are read as YAML (JSON is YAML); other values as their text.
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    if "\n" in text:
        raise SystemExit(f"gateway-run: error: VGW_{name} must be one line")
    print(f"VGW_{name}={text}")
EOF
}

stop_all() {
  if [ -n "${gateway_pid:-}" ]; then
    kill -TERM "$gateway_pid" 2>/dev/null || true
    wait "$gateway_pid" 2>/dev/null || true
  fi
  # SIGTERM: Redis writes out its append-only file, then exits.
  if [ -n "${redis_pid:-}" ]; then
    kill -TERM "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
  fi
}

check_settings
trap stop_all EXIT
trap 'exit 143' TERM INT
if [ -z "${REDIS_URL:-}" ]; then
  start_redis
fi
settings="$(gateway_settings)"
while IFS= read -r setting; do
  export "${setting?}"
done <<<"$settings"
log "gateway for $MODEL_NAME (discovery: $DISCOVERY) on 0.0.0.0:$GATEWAY_PORT," \
  "$GATEWAY_WORKERS worker(s)"
vllm-gateway serve &
gateway_pid=$!
rc=0
wait "$gateway_pid" || rc=$?
gateway_pid=""
log "vllm-gateway exited with status $rc"
exit "$rc"
