# shellcheck shell=bash
# Shared by the scripts in this folder (sourced, not run).
#
# Every script here runs on a SkyPilot node, from the workdir (the repository
# root), and is configured only through environment variables: the task's
# `envs:` and `secrets:`, plus what SkyPilot sets itself (SKYPILOT_NODE_RANK,
# SKYPILOT_NUM_NODES, SKYPILOT_NODE_IPS, SKYPILOT_NUM_GPUS_PER_NODE; during
# `setup:` the SKYPILOT_SETUP_* variants). Our own variables never start with
# VLLM_: vLLM reads that prefix itself (VLLM_PORT, for one, is its internal
# RPC port, and a Kubernetes Service named "vllm" injects VLLM_PORT=tcp://...).

# The name of the script, for messages.
SCRIPT="${SCRIPT:-$(basename "$0" .sh)}"

log() { printf '%s: %s\n' "$SCRIPT" "$*"; }

die() {
  printf '%s: error: %s\n' "$SCRIPT" "$*" >&2
  exit 1
}

# is_true NAME: the variable's value as a boolean; anything but true/false/1/0/yes/no stops.
is_true() {
  local value="${!1:-}"
  case "${value,,}" in
    true | 1 | yes) return 0 ;;
    false | 0 | no | "") return 1 ;;
    *) die "$1 must be true or false, not '$value'" ;;
  esac
}

# require_int NAME MIN: the variable must be an integer >= MIN.
require_int() {
  local value="${!1:-}"
  [[ "$value" =~ ^[0-9]+$ ]] && ((10#$value >= $2)) ||
    die "$1 must be an integer >= $2, not '$value'"
}

# This node's rank and the cluster's size, in `run:` and in `setup:`.
node_rank() { echo "${SKYPILOT_NODE_RANK:-${SKYPILOT_SETUP_NODE_RANK:-0}}"; }
num_nodes() { echo "${SKYPILOT_NUM_NODES:-1}"; }
gpus_per_node() { echo "${SKYPILOT_NUM_GPUS_PER_NODE:-${SKYPILOT_SETUP_NUM_GPUS_PER_NODE:-1}}"; }

# The IP of node RANK (SkyPilot lists one per line, head first).
node_ip() {
  local ips="${SKYPILOT_NODE_IPS:-${SKYPILOT_SETUP_NODE_IPS:-127.0.0.1}}"
  sed -n "$(($1 + 1))p" <<<"$ips"
}

# wait_for_port HOST PORT TIMEOUT: until something accepts connections there.
wait_for_port() {
  local deadline=$((SECONDS + $3))
  until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
    ((SECONDS < deadline)) || die "nothing listens on $1:$2 after $3 s"
    sleep 1
  done
}

# Where the weights live: the shared volume, the Hugging Face cache on it, and
# the marker a finished download leaves for every other node and replica.
MODEL_VOLUME="${MODEL_VOLUME:-/model-weights}"
MODEL_ID="${MODEL_ID:-Qwen/Qwen2.5-7B-Instruct}"
MODEL_REVISION="${MODEL_REVISION:-}"
export HF_HOME="${HF_HOME:-$MODEL_VOLUME/hf_home}"
DOWNLOAD_DIR="${DOWNLOAD_DIR:-$HF_HOME/hub}"
WEIGHTS_STATE_DIR="$MODEL_VOLUME/.weights"
weights_slug="${MODEL_ID//\//--}@${MODEL_REVISION:-main}"
WEIGHTS_MARKER="$WEIGHTS_STATE_DIR/$weights_slug.complete"
WEIGHTS_LOCK="$WEIGHTS_STATE_DIR/$weights_slug.lock"

# An empty HF_TOKEN (the task's default) means anonymous, not "the token ''".
[ -n "${HF_TOKEN:-}" ] || unset HF_TOKEN
