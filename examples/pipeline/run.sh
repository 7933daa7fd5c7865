#!/usr/bin/env bash
# SFT -> DPO -> merge -> edit -> RAG attach, each step starting from the previous one's output (lineage kept).
# From the repository root: bash examples/pipeline/run.sh   (about 5 minutes on 2 CPU cores)
set -euo pipefail
HERE="$(dirname "$0")"
OUT=runs/pipeline  # where the YAMLs write
mmadapt train "$HERE/1_sft.yaml" "$@"
mmadapt train "$HERE/2_dpo.yaml" "$@"
mmadapt merge "$HERE/3_merge.yaml" --out "$OUT/merged" --overwrite
# A tiny model's "facts" are weak handles for ROME: --allow-weak keeps the edit and its record says how it went.
mmadapt edit apply --model "$OUT/merged" --edits "$HERE/4_edits.jsonl" --method rome --out "$OUT/edited" \
  --corpus "$HERE/5_docs.jsonl" --allow-weak --overwrite
mmadapt rag build "$HERE/5_docs.jsonl" --out "$OUT/index" --overwrite
mmadapt rag ask "$OUT/index" "how many shapes can an image show?" --model "$OUT/edited"
mmadapt lineage "$OUT/edited" --verify
