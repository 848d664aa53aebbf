#!/usr/bin/env bash
# Checks a GPU node before anything is downloaded or started; run by the vLLM
# tasks' `setup:`. Every check runs, each failure is printed with what to do,
# and the script exits 1 if any failed, so one launch shows every problem.
#
#   GPU visible          nvidia-smi on PATH and at least as many GPUs as requested
#   driver CUDA          the driver's CUDA version >= the CUDA torch was built with
#   python and torch     python3 imports torch and vllm
#   volume               MODEL_VOLUME is a mount point (the PVC, not the container's
#                        disk) and writable; PREFLIGHT_REQUIRE_MOUNT=false allows a
#                        plain directory
#   free disk            WEIGHTS_MIN_FREE_GB free on the volume, unless this model's
#                        weights are already there
set -uo pipefail
SCRIPT=preflight
# shellcheck source=sky/scripts/common.sh
source "$(dirname "$0")/common.sh"

failures=0
ok() { log "ok: $*"; }
fail() {
  printf '%s: FAIL: %s\n' "$SCRIPT" "$*" >&2
  failures=$((failures + 1))
}

driver_cuda=""
check_gpu() {
  if ! command -v nvidia-smi >/dev/null; then
    fail "no GPU: nvidia-smi is not on PATH. Is this a GPU node, with the NVIDIA" \
      "container runtime (Kubernetes: the NVIDIA device plugin or GPU operator)?"
    return
  fi
  local listed wanted
  listed="$(nvidia-smi -L 2>&1)" || {
    fail "no GPU: nvidia-smi -L failed: $listed"
    return
  }
  wanted="$(gpus_per_node)"
  local count
  count="$(grep -c '^GPU [0-9]' <<<"$listed")"
  if ((count < wanted)); then
    fail "$count GPU(s) visible, $wanted requested (SKYPILOT_NUM_GPUS_PER_NODE): $listed"
    return
  fi
  driver_cuda="$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9][0-9.]*\).*/\1/p' | head -n1)"
  ok "$count GPU(s) visible; driver supports CUDA ${driver_cuda:-unknown}"
}

torch_cuda=""
check_python() {
  if ! command -v python3 >/dev/null; then
    fail "python3 is not on PATH: is image_id the vllm/vllm-openai image?"
    return
  fi
  local out torch_version vllm_version
  # Versions on the last line; imports may log before it.
  local code='import torch, vllm; print(torch.__version__, torch.version.cuda or "none", vllm.__version__)'
  if ! out="$(python3 -c "$code" 2>&1)"; then
    fail "python3 cannot import torch and vllm: ${out##*$'\n'}"
    return
  fi
  read -r torch_version torch_cuda vllm_version <<<"${out##*$'\n'}"
  ok "python3: torch $torch_version (CUDA $torch_cuda), vllm $vllm_version"
  [ "$torch_cuda" != none ] || torch_cuda=""
}

# version_ge A B: A >= B, comparing dotted numbers.
version_ge() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" = "$2" ]; }

check_cuda() {
  if [ -z "$driver_cuda" ] || [ -z "$torch_cuda" ]; then
    return # the GPU or the torch check has already said why (or torch has no CUDA)
  fi
  if version_ge "$driver_cuda" "$torch_cuda"; then
    ok "driver CUDA $driver_cuda >= the image's CUDA $torch_cuda"
  else
    fail "the driver supports CUDA $driver_cuda but the image's torch was built for" \
      "CUDA $torch_cuda: upgrade the node's NVIDIA driver, or pin an older image_id"
  fi
}

is_mount_point() {
  local dir
  dir="$(cd "$1" && pwd -P)" || return 1
  awk -v dir="$dir" '$2 == dir { found = 1 } END { exit !found }' /proc/self/mounts
}

volume_ok=false
check_volume() {
  if [ ! -d "$MODEL_VOLUME" ]; then
    fail "the model volume is not mounted: $MODEL_VOLUME does not exist. Create it with" \
      "\`sky volumes apply sky/volume.sky.yaml\` and keep the task's volumes: entry"
    return
  fi
  if is_true PREFLIGHT_REQUIRE_MOUNT && ! is_mount_point "$MODEL_VOLUME"; then
    fail "the model volume is not mounted: $MODEL_VOLUME is a plain directory, not a" \
      "mount point, so the weights would fill the container's own disk and vanish with it"
    return
  fi
  local probe="$MODEL_VOLUME/.preflight-${HOSTNAME:-node}-$$"
  local err
  if ! err="$( (: >"$probe") 2>&1)"; then
    fail "the model volume $MODEL_VOLUME is not writable: ${err##*: }." \
      "A ReadWriteMany PVC must be writable by the pod's user"
    return
  fi
  rm -f "$probe"
  volume_ok=true
  ok "$MODEL_VOLUME is mounted and writable"
}

check_disk() {
  $volume_ok || return
  if [ -f "$WEIGHTS_MARKER" ]; then
    ok "the weights of $MODEL_ID are already on the volume; no free space needed"
    return
  fi
  require_int WEIGHTS_MIN_FREE_GB 0
  local free_kib need_kib
  free_kib="$(df -Pk "$MODEL_VOLUME" | awk 'NR == 2 { print $4 }')"
  need_kib=$((WEIGHTS_MIN_FREE_GB * 1024 * 1024))
  if ((free_kib < need_kib)); then
    fail "not enough free space on $MODEL_VOLUME for the weights of $MODEL_ID:" \
      "$((free_kib / 1024 / 1024)) GiB free, WEIGHTS_MIN_FREE_GB=$WEIGHTS_MIN_FREE_GB needed." \
      "Free space, or grow the volume (size: in sky/volume.sky.yaml)"
    return
  fi
  ok "$((free_kib / 1024 / 1024)) GiB free on $MODEL_VOLUME (>= $WEIGHTS_MIN_FREE_GB)"
}

PREFLIGHT_REQUIRE_MOUNT="${PREFLIGHT_REQUIRE_MOUNT:-true}"
WEIGHTS_MIN_FREE_GB="${WEIGHTS_MIN_FREE_GB:-40}"
log "node $(node_rank) of $(num_nodes), model $MODEL_ID"
check_gpu
check_python
check_cuda
check_volume
check_disk
if ((failures > 0)); then
  printf '%s: %d check(s) failed; nothing was downloaded or started\n' "$SCRIPT" "$failures" >&2
  exit 1
fi
log "all checks passed"
