#!/usr/bin/env bash
# Puts MODEL_ID's weights on the shared volume once, for every node and replica.
#
# The first rank-0 node to create the lock directory (mkdir is atomic, on
# network filesystems too) downloads into the Hugging Face cache on the volume
# and then writes the completion marker. Every other node, and every other
# cluster or SkyServe replica sharing the volume, waits for the marker. When
# the marker is there this script returns at once, so `run:` calls it again:
# `sky exec` with another MODEL_ID downloads that one too.
#
#   WEIGHTS_ALLOW_PATTERNS  files to fetch (default: configs, safetensors, tokenizer
#                           files, remote code); '*' fetches everything, e.g. for a
#                           repository with only .bin weights
#   WEIGHTS_WAIT_TIMEOUT    seconds a node waits for another's download (default 7200)
#   REDOWNLOAD=true         fetch again over what is there (set it for one launch)
set -euo pipefail
SCRIPT=weights
# shellcheck source=sky/scripts/common.sh
source "$(dirname "$0")/common.sh"

export MODEL_ID MODEL_REVISION DOWNLOAD_DIR
export WEIGHTS_ALLOW_PATTERNS="${WEIGHTS_ALLOW_PATTERNS:-*.json *.safetensors *.model *.txt *.tiktoken *.jinja *.py}"
WEIGHTS_WAIT_TIMEOUT="${WEIGHTS_WAIT_TIMEOUT:-7200}"
WEIGHTS_POLL_SECONDS="${WEIGHTS_POLL_SECONDS:-10}"
require_int WEIGHTS_WAIT_TIMEOUT 0
rank="$(node_rank)"

download() {
  trap 'rm -rf "$WEIGHTS_LOCK"' EXIT
  printf 'host=%s pid=%s started=%s\n' "${HOSTNAME:-?}" "$$" "$(date -u +%FT%TZ)" \
    >"$WEIGHTS_LOCK/owner"
  log "downloading $MODEL_ID${MODEL_REVISION:+ at $MODEL_REVISION} into $DOWNLOAD_DIR"
  local force=0
  if is_true REDOWNLOAD; then force=1; fi
  FORCE_DOWNLOAD=$force python3 - <<'EOF'
import os

from huggingface_hub import snapshot_download

path = snapshot_download(
    repo_id=os.environ["MODEL_ID"],
    revision=os.environ["MODEL_REVISION"] or None,
    cache_dir=os.environ["DOWNLOAD_DIR"],
    allow_patterns=os.environ["WEIGHTS_ALLOW_PATTERNS"].split() or None,
    force_download=os.environ["FORCE_DOWNLOAD"] == "1",
)
print(f"weights: snapshot at {path}")
EOF
  # Written whole, then renamed: a waiting node never reads half a marker.
  printf 'model=%s revision=%s host=%s finished=%s\n' "$MODEL_ID" "${MODEL_REVISION:-main}" \
    "${HOSTNAME:-?}" "$(date -u +%FT%TZ)" >"$WEIGHTS_MARKER.tmp"
  mv "$WEIGHTS_MARKER.tmp" "$WEIGHTS_MARKER"
  log "done: $WEIGHTS_MARKER"
}

mkdir -p "$WEIGHTS_STATE_DIR"
if [ "$rank" = 0 ] && is_true REDOWNLOAD; then
  rm -f "$WEIGHTS_MARKER"
fi
if [ -f "$WEIGHTS_MARKER" ]; then
  log "the weights of $MODEL_ID are already on the volume ($WEIGHTS_MARKER)"
  exit 0
fi

deadline=$((SECONDS + WEIGHTS_WAIT_TIMEOUT))
next_report=$SECONDS
while [ ! -f "$WEIGHTS_MARKER" ]; do
  # Only a head node downloads; if the downloader failed, its lock is gone and
  # the next head node to get here takes over.
  if [ "$rank" = 0 ] && mkdir "$WEIGHTS_LOCK" 2>/dev/null; then
    download
    exit 0
  fi
  owner="$(cat "$WEIGHTS_LOCK/owner" 2>/dev/null || echo "nobody yet")"
  if ((SECONDS >= deadline)); then
    die "timed out after ${WEIGHTS_WAIT_TIMEOUT}s waiting for the weights of $MODEL_ID" \
      "($WEIGHTS_MARKER); downloader: $owner. If no node is downloading any more," \
      "remove $WEIGHTS_LOCK and launch again"
  fi
  if ((SECONDS >= next_report)); then
    log "node $rank waits for the weights of $MODEL_ID; downloader: $owner"
    next_report=$((SECONDS + 60))
  fi
  sleep "$WEIGHTS_POLL_SECONDS"
done
log "the weights of $MODEL_ID are on the volume ($WEIGHTS_MARKER)"
