#!/usr/bin/env bash
# GPU throughput of hw3 in at most ~5 minutes on one H100/H200 (synthetic CIFAR-shaped data, nothing to download):
#   CIFAR-stem ResNet-18 at 32 px, bf16, with and without channels_last and torch.compile (goal >= 35,000 img/s);
#   ResNet-50 at 224 px with the 32 -> 224 resize on the GPU, bf16, channels_last.
# Costs per trained image (forward + backward): 3.3 GFLOP (ResNet-18, 32 px), 24.3 GFLOP (ResNet-50, 224 px).
#   bash benchmarks/gpu.sh            (from the repository root, hw3 installed or on PYTHONPATH)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch, timm, accelerate; print('torch', torch.__version__, 'timm', timm.__version__, 'accelerate', accelerate.__version__)"
run() { timeout 120 python benchmarks/throughput.py "$@" 2>&1 | grep -E "img/s|Error|error" || echo "FAILED: $*"; }
R18="--model resnet18 --image-size 32 --batch-size 512 --gflop 3.3 --steps 60"
run $R18
run $R18 --channels-last
run $R18 --compile
run $R18 --channels-last --compile
run --model resnet50 --image-size 224 --batch-size 256 --gflop 24.3 --steps 20 --channels-last
python benchmarks/input_path.py --images 50000 --batch-size 512 --workers 8 2>&1 | tail -3
