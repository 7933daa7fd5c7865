#!/usr/bin/env bash
# One prepared GPU check (under 10 minutes): bf16 SFT of a Qwen2.5-0.5B-sized LLM with a SigLIP-base-sized tower
# (tokens/s, MFU against the GPU's peak bf16 FLOP/s; target >= 40% on an H200), the same packed with flash
# attention (sdpa when flash-attn is not installed), and QLoRA 4-bit steps (bitsandbytes).
# Usage: bash benchmarks/gpu_check.sh [--steps 30 --batch 16 --variants bf16,packed,qlora --peak-tflops N]
# The CPU smoke run of the same Python path: python benchmarks/gpu_check.py --dry-run
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(command -v python || command -v python3)  # images with only python3 (CUDA containers) are common
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check.sh: no CUDA device visible to torch (nvidia-smi, CUDA_VISIBLE_DEVICES, a CUDA build of torch?)." >&2
    echo "It measures GPU throughput only; for the CPU smoke run use: python benchmarks/gpu_check.py --dry-run" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
"$PY" -c 'import flash_attn; print("flash-attn", flash_attn.__version__)' 2>/dev/null || echo "flash-attn not installed: packed runs use sdpa"
"$PY" -c 'import bitsandbytes; print("bitsandbytes", bitsandbytes.__version__)' 2>/dev/null || echo "bitsandbytes not installed: QLoRA skipped"
exec timeout 570 "$PY" benchmarks/gpu_check.py "$@"
