#!/usr/bin/env bash
# Serves MODEL_ID with `vllm serve`, every tunable read from an environment
# variable, and reports ready only when vLLM answers /health, lists the model
# on /v1/models with the API key, and refuses /v1/models without it.
#
#   variable                      vllm serve flag (flags checked against vLLM v0.32.0)
#   MODEL_ID                      the model (positional)
#   MODEL_REVISION                --revision and --tokenizer-revision
#   SERVED_MODEL_NAME             --served-model-name (default: MODEL_ID)
#   SERVER_HOST, SERVER_PORT      --host (0.0.0.0), --port (8000)
#   TENSOR_PARALLEL_SIZE          --tensor-parallel-size (default: GPUs per node)
#   PIPELINE_PARALLEL_SIZE        --pipeline-parallel-size (default: nodes); above 1
#                                 also --distributed-executor-backend ray
#   DTYPE                         --dtype (bfloat16)
#   MAX_MODEL_LEN                 --max-model-len
#   MAX_NUM_SEQS                  --max-num-seqs (256)
#   GPU_MEMORY_UTILIZATION        --gpu-memory-utilization (0.90)
#   QUANTIZATION                  --quantization
#   KV_CACHE_DTYPE                --kv-cache-dtype (auto)
#   ATTENTION_BACKEND             --attention-backend
#   ENFORCE_EAGER=true            --enforce-eager
#   CUDAGRAPH_MODE                -cc.cudagraph_mode=MODE (NONE, PIECEWISE, FULL,
#                                 FULL_DECODE_ONLY, FULL_AND_PIECEWISE)
#   CHAT_TEMPLATE                 --chat-template (a file, relative to the workdir)
#   CHAT_TEMPLATE_CONTENT_FORMAT  --chat-template-content-format (auto)
#   TRUST_REMOTE_CODE=true        --trust-remote-code
#   TRUST_REQUEST_CHAT_TEMPLATE   false (default): --no-trust-request-chat-template;
#                                 true: --trust-request-chat-template
#   DOWNLOAD_DIR                  --download-dir (the Hugging Face cache on the volume)
#   LOG_LEVEL                     environment VLLM_LOGGING_LEVEL (INFO)
#   EXTRA_VLLM_ARGS               appended as they are (split on spaces)
#   VLLM_API_KEY (a secret)       required; vLLM reads it from the environment, which
#                                 keeps it off the command line (ps, logs)
#
# An empty value leaves the flag out: vLLM's own default applies. On several
# nodes, node 0 starts a Ray head and vLLM, the others join it as Ray workers.
set -euo pipefail
SCRIPT=vllm-run
# shellcheck source=sky/scripts/common.sh
source "$(dirname "$0")/common.sh"

SERVED_MODEL_NAME="${SERVED_MODEL_NAME:-$MODEL_ID}"
SERVER_HOST="${SERVER_HOST:-0.0.0.0}"
SERVER_PORT="${SERVER_PORT:-8000}"
TENSOR_PARALLEL_SIZE="${TENSOR_PARALLEL_SIZE:-$(gpus_per_node)}"
PIPELINE_PARALLEL_SIZE="${PIPELINE_PARALLEL_SIZE:-$(num_nodes)}"
DTYPE="${DTYPE-bfloat16}"
MAX_MODEL_LEN="${MAX_MODEL_LEN-}"
MAX_NUM_SEQS="${MAX_NUM_SEQS-256}"
GPU_MEMORY_UTILIZATION="${GPU_MEMORY_UTILIZATION-0.90}"
QUANTIZATION="${QUANTIZATION-}"
KV_CACHE_DTYPE="${KV_CACHE_DTYPE-auto}"
ATTENTION_BACKEND="${ATTENTION_BACKEND-}"
CUDAGRAPH_MODE="${CUDAGRAPH_MODE-}"
CHAT_TEMPLATE="${CHAT_TEMPLATE-}"
CHAT_TEMPLATE_CONTENT_FORMAT="${CHAT_TEMPLATE_CONTENT_FORMAT-auto}"
EXTRA_VLLM_ARGS="${EXTRA_VLLM_ARGS-}"
READY_TIMEOUT="${READY_TIMEOUT:-3600}"
READY_POLL_SECONDS="${READY_POLL_SECONDS:-5}"
RAY_PORT="${RAY_PORT:-6379}"

rank="$(node_rank)"
nodes="$(num_nodes)"
head_ip="$(node_ip 0)"

check_settings() {
  [ -n "${VLLM_API_KEY:-}" ] ||
    die "VLLM_API_KEY is empty: pass it as a secret (sky launch --secret VLLM_API_KEY)." \
      "vLLM is never started without an API key"
  require_int SERVER_PORT 1
  require_int TENSOR_PARALLEL_SIZE 1
  require_int PIPELINE_PARALLEL_SIZE 1
  require_int READY_TIMEOUT 1
  case "${CUDAGRAPH_MODE^^}" in
    "" | NONE | PIECEWISE | FULL | FULL_DECODE_ONLY | FULL_AND_PIECEWISE) ;;
    *) die "CUDAGRAPH_MODE must be NONE, PIECEWISE, FULL, FULL_DECODE_ONLY or" \
      "FULL_AND_PIECEWISE, not '$CUDAGRAPH_MODE'" ;;
  esac
  if is_true ENFORCE_EAGER && [ -n "$CUDAGRAPH_MODE" ] && [ "${CUDAGRAPH_MODE^^}" != NONE ]; then
    die "ENFORCE_EAGER=true turns CUDA graphs off; it contradicts CUDAGRAPH_MODE=$CUDAGRAPH_MODE"
  fi
  if [ -n "$CHAT_TEMPLATE" ] && [ ! -f "$CHAT_TEMPLATE" ]; then
    die "CHAT_TEMPLATE: no file $CHAT_TEMPLATE (relative to $(pwd))"
  fi
  is_true TRUST_REMOTE_CODE || true
  is_true TRUST_REQUEST_CHAT_TEMPLATE || true
}

# option FLAG VARIABLE: FLAG VALUE when the variable is not empty.
option() {
  if [ -n "${!2}" ]; then args+=("$1" "${!2}"); fi
}

build_args() {
  args=(serve "$MODEL_ID" --served-model-name "$SERVED_MODEL_NAME"
    --host "$SERVER_HOST" --port "$SERVER_PORT" --download-dir "$DOWNLOAD_DIR"
    --tensor-parallel-size "$TENSOR_PARALLEL_SIZE")
  if ((PIPELINE_PARALLEL_SIZE > 1)); then
    args+=(--pipeline-parallel-size "$PIPELINE_PARALLEL_SIZE" --distributed-executor-backend ray)
  fi
  option --revision MODEL_REVISION
  option --tokenizer-revision MODEL_REVISION
  option --dtype DTYPE
  option --max-model-len MAX_MODEL_LEN
  option --max-num-seqs MAX_NUM_SEQS
  option --gpu-memory-utilization GPU_MEMORY_UTILIZATION
  option --quantization QUANTIZATION
  option --kv-cache-dtype KV_CACHE_DTYPE
  option --attention-backend ATTENTION_BACKEND
  if is_true ENFORCE_EAGER; then args+=(--enforce-eager); fi
  # -cc is the compilation config (-O became the optimization level).
  if [ -n "$CUDAGRAPH_MODE" ]; then args+=("-cc.cudagraph_mode=${CUDAGRAPH_MODE^^}"); fi
  option --chat-template CHAT_TEMPLATE
  option --chat-template-content-format CHAT_TEMPLATE_CONTENT_FORMAT
  if is_true TRUST_REMOTE_CODE; then args+=(--trust-remote-code); fi
  if is_true TRUST_REQUEST_CHAT_TEMPLATE; then
    args+=(--trust-request-chat-template)
  else
    args+=(--no-trust-request-chat-template)
  fi
  local extra=()
  read -r -a extra <<<"$EXTRA_VLLM_ARGS"
  args+=("${extra[@]}")
}

# Environment vLLM reads itself.
export_vllm_env() {
  export VLLM_API_KEY
  export VLLM_LOGGING_LEVEL="${LOG_LEVEL:-INFO}"
  # The weights are on the volume (weights.sh): a node must not quietly fetch
  # its own copy. Set HF_HUB_OFFLINE=0 to let vLLM download.
  export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
}

ray_worker() {
  local my_ip
  my_ip="$(node_ip "$rank")"
  log "node $rank: joining the Ray head at $head_ip:$RAY_PORT"
  wait_for_port "$head_ip" "$RAY_PORT" "$READY_TIMEOUT"
  export VLLM_HOST_IP="$my_ip"
  exec ray start --address="$head_ip:$RAY_PORT" --node-ip-address="$my_ip" \
    --disable-usage-stats --block
}

ray_head() {
  # SkyPilot runs its own Ray on 6380; this one is vLLM's, on RAY_PORT.
  export VLLM_HOST_IP="$head_ip" RAY_ADDRESS="$head_ip:$RAY_PORT"
  ray start --head --port="$RAY_PORT" --node-ip-address="$head_ip" --disable-usage-stats
}

# status URL [curl options...]: the HTTP status of a GET, 000 when unreachable.
status() {
  local url="$1"
  shift
  curl -s -o "$tmp/body" -w '%{http_code}' --max-time 10 "$@" "$url" || true
}

lists_model() {
  python3 -c 'import json, sys
ids = [m.get("id") for m in json.load(open(sys.argv[1])).get("data", [])]
sys.exit(sys.argv[2] not in ids)' "$tmp/body" "$SERVED_MODEL_NAME" 2>/dev/null
}

stop_vllm() {
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

wait_ready() {
  local base="http://127.0.0.1:$SERVER_PORT" deadline=$((SECONDS + READY_TIMEOUT)) rc
  # The key goes to curl in a file, not on its command line.
  printf 'Authorization: Bearer %s\n' "$VLLM_API_KEY" >"$tmp/auth"
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rc=0
      wait "$pid" || rc=$?
      die "vllm serve exited with status $rc before it was ready (its output is above)"
    fi
    if [ "$(status "$base/health")" = 200 ] &&
      [ "$(status "$base/v1/models" -H "@$tmp/auth")" = 200 ] && lists_model; then
      break
    fi
    if ((SECONDS >= deadline)); then
      stop_vllm
      die "vLLM was not ready after ${READY_TIMEOUT}s: /health and /v1/models (with the" \
        "key, listing $SERVED_MODEL_NAME) must both answer 200"
    fi
    sleep "$READY_POLL_SECONDS"
  done
  rc="$(status "$base/v1/models")"
  if [ "$rc" != 401 ]; then
    stop_vllm
    die "vLLM answered /v1/models without the API key (HTTP $rc, not 401): refusing to serve"
  fi
}

check_settings
build_args
export_vllm_env
if ((nodes > 1)) && [ "$rank" != 0 ]; then
  ray_worker
fi
if ((nodes > 1)); then
  ray_head
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
log "node $rank of $nodes: vllm ${args[*]}"
vllm "${args[@]}" &
pid=$!
trap 'stop_vllm; exit 143' TERM INT
wait_ready
log "ready: $SERVED_MODEL_NAME on $head_ip:$SERVER_PORT (/health; /v1/models with the key)"
rc=0
wait "$pid" || rc=$?
log "vllm serve exited with status $rc"
exit "$rc"
