#!/usr/bin/env bash
# hw3 on one GPU in about 5 minutes (synthetic CIFAR-shaped data held on the device; nothing to download):
#   1. hw3's training step against a hand-written loop (benchmarks/vs_hand_loop.py), same model, precision, layout
#      and batch, eager and under torch.compile(mode="reduce-overhead") (CUDA graphs): CIFAR-stem ResNet-18 at
#      batch 512 and 128, the SAM + ResNeSt-26d step of recipes/cifar100_sam.yaml, ResNet-50 at 224 px;
#      fused against foreach SGD inside hw3's step; the device-resident input path against torchvision's;
#   2. the GPU tests (pytest -m gpu).
# Targets (issue 12, bf16 on an H100/H200): hw3 eager >= 1.0x the eager hand loop (>= 49k img/s at batch 512),
# with CUDA graphs >= 75k img/s at 512 and >= 35k at 128; the cifar100_sam step >= 6k img/s.
#   bash benchmarks/gpu.sh             (from the repository root; hw3 installed or on PYTHONPATH)
# Every line also goes to $OUT/gpu.log when OUT is set. Each step has its own time limit; a failed or timed-out
# step prints FAILED and the script goes on.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="${OUT:-/tmp}/gpu.log"
: > "$LOG"
say() { echo "$@" | tee -a "$LOG"; }
step() {  # step SECONDS ARGS...: one vs_hand_loop.py comparison, its result line only
  local limit=$1; shift
  timeout "$limit" python benchmarks/vs_hand_loop.py "$@" > /tmp/vs_hand_loop.out 2>&1
  local code=$?
  if [ $code -eq 0 ]; then tail -1 /tmp/vs_hand_loop.out | tee -a "$LOG"; else
    say "FAILED (exit $code): vs_hand_loop.py $*"; tail -5 /tmp/vs_hand_loop.out | tee -a "$LOG"; fi
}
started=$(date +%s)
say "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
say "$(python -c 'import torch, timm, accelerate; print("torch", torch.__version__, "timm", timm.__version__, "accelerate", accelerate.__version__)')"
R18="--model resnet18 --precision bf16 --channels-last"
step 60 $R18 --batch-size 512
step 60 $R18 --batch-size 512 --set optim.fused=false
step 60 $R18 --batch-size 128
step 60 --model resnest26d --batch-size 128 --precision bf16 --channels-last --sam
step 60 --model resnet50 --image-size 224 --batch-size 256 --precision bf16 --channels-last --steps 20
step 150 $R18 --batch-size 512 --compile reduce-overhead
step 100 $R18 --batch-size 128 --compile reduce-overhead
step 180 --model resnest26d --batch-size 128 --precision bf16 --channels-last --sam --compile reduce-overhead
timeout 60 python benchmarks/input_path.py --images 50000 --batch-size 512 --workers 8 2>&1 | tail -3 | tee -a "$LOG"
say "benchmarks took $(( $(date +%s) - started )) s"
timeout 240 python -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -3 | tee -a "$LOG"
say "gpu.sh took $(( $(date +%s) - started )) s"
