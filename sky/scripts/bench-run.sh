#!/usr/bin/env bash
# `vllm bench serve` against the gateway, as a client of it: streamed chat
# completions with a gateway key (vLLM's benchmark sends $OPENAI_API_KEY as the
# bearer token), results saved as JSON under RESULTS_DIR.
#
#   GATEWAY_URL           required: `sky status --endpoint 8080 gateway` (host:port
#                         gets http://; a trailing /v1 is dropped)
#   OPENAI_API_KEY        required (a secret): a key the gateway issued
#   MODEL_NAME            the model to ask for; TOKENIZER (default MODEL_NAME) counts tokens
#   BENCH_NUM_PROMPTS, BENCH_INPUT_LEN, BENCH_OUTPUT_LEN, BENCH_MAX_CONCURRENCY,
#   BENCH_REQUEST_RATE    the load (random prompts)
#   BENCH_LABEL           names the result file: LABEL-<UTC time>.json
#   EXTRA_BENCH_ARGS      appended as they are (split on spaces)
set -euo pipefail
SCRIPT=bench-run
# shellcheck source=sky/scripts/common.sh
source "$(dirname "$0")/common.sh"

GATEWAY_URL="${GATEWAY_URL:-}"
MODEL_NAME="${MODEL_NAME:-Qwen/Qwen2.5-7B-Instruct}"
TOKENIZER="${TOKENIZER:-$MODEL_NAME}"
BENCH_NUM_PROMPTS="${BENCH_NUM_PROMPTS:-200}"
BENCH_INPUT_LEN="${BENCH_INPUT_LEN:-1024}"
BENCH_OUTPUT_LEN="${BENCH_OUTPUT_LEN:-256}"
BENCH_MAX_CONCURRENCY="${BENCH_MAX_CONCURRENCY:-32}"
BENCH_REQUEST_RATE="${BENCH_REQUEST_RATE:-inf}"
BENCH_LABEL="${BENCH_LABEL:-gateway}"
RESULTS_DIR="${RESULTS_DIR:-/model-weights/bench-results}"
EXTRA_BENCH_ARGS="${EXTRA_BENCH_ARGS:-}"

[ -n "$GATEWAY_URL" ] ||
  die "GATEWAY_URL is empty: --env GATEWAY_URL=\$(sky status --endpoint 8080 gateway)"
[ -n "${OPENAI_API_KEY:-}" ] ||
  die "OPENAI_API_KEY is empty: pass a gateway key with --secret OPENAI_API_KEY"
for name in BENCH_NUM_PROMPTS BENCH_INPUT_LEN BENCH_OUTPUT_LEN BENCH_MAX_CONCURRENCY; do
  require_int "$name" 1
done

# SkyPilot gives endpoints as host:port, http://... or https://...
base_url="${GATEWAY_URL%/}"
base_url="${base_url%/v1}"
case "$base_url" in
  http://* | https://*) ;;
  *) base_url="http://$base_url" ;;
esac

mkdir -p "$RESULTS_DIR"
result="$BENCH_LABEL-$(date -u +%Y%m%dT%H%M%SZ).json"
args=(bench serve --backend openai-chat --base-url "$base_url"
  --endpoint /v1/chat/completions --model "$MODEL_NAME" --tokenizer "$TOKENIZER"
  --dataset-name random --random-input-len "$BENCH_INPUT_LEN"
  --random-output-len "$BENCH_OUTPUT_LEN" --num-prompts "$BENCH_NUM_PROMPTS"
  --max-concurrency "$BENCH_MAX_CONCURRENCY" --request-rate "$BENCH_REQUEST_RATE"
  --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,90,99
  --save-result --result-dir "$RESULTS_DIR" --result-filename "$result")
extra=()
read -r -a extra <<<"$EXTRA_BENCH_ARGS"
args+=("${extra[@]}")

export OPENAI_API_KEY
log "vllm ${args[*]}"
vllm "${args[@]}"
[ -f "$RESULTS_DIR/$result" ] || die "vllm bench serve wrote no $RESULTS_DIR/$result"
log "results: $RESULTS_DIR/$result"
