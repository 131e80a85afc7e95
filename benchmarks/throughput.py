"""Training throughput of hw3 itself (hw3.loop.train_one_epoch) for one model/precision/layout setting, on
synthetic CIFAR-shaped data held on the device; used by gpu.sh.

    python benchmarks/throughput.py --model resnet18 --image-size 32 --batch-size 512 --precision bf16 \
        [--channels-last] [--compile] [--gflop 3.3] [--steps 50] [--rounds 3]

The images are 32x32 uint8; with --image-size 224 they are resized on the device, as the pretrained CIFAR-100
recipe does. --gflop is the training cost of one image (forward + backward) for the share of the GPU's peak.
"""

from __future__ import annotations

import argparse

import torch
from common import hw3_run, median, time_hw3_epoch

from hw3.config import DataConfig
from hw3.data import Data, InputSpec
from hw3.data.sources import synthetic

# Dense bf16 tensor-core peaks (NVIDIA datasheets), TFLOP/s.
PEAKS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def peak_tflops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAKS.items() if k in name), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--gflop", type=float, default=None)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--set", nargs="*", default=[], metavar="key=value", help="further recipe overrides")
    args = p.parse_args()
    n = args.steps * args.batch_size
    r = hw3_run(
        [
            f"model.name={args.model}",
            f"data.image_size={args.image_size}",
            f"data.max_train_samples={n}",
            f"train.batch_size={args.batch_size}",
            "optim.name=sgd",
            "optim.lr=0.01",
            "train.epochs=1000",
            f"train.mixed_precision={args.precision}",
            f"train.channels_last={str(args.channels_last).lower()}",
            f"train.compile={str(args.compile).lower()}",
            f"model.small_input={str(args.image_size <= 64).lower()}",
            *args.set,
        ]
    )
    if args.image_size != 32:  # CIFAR-sized images, resized on the device like the pretrained recipe
        src = synthetic(DataConfig(name="synthetic", image_size=32, max_train_samples=n, max_eval_samples=64))
        spec = InputSpec(args.image_size, 3, [0.5] * 3, [0.25] * 3)
        r.data = Data(r.cfg.data, src, spec, r.accelerator.device, 1, 0, 0, channels_last=args.channels_last)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    time_hw3_epoch(r, 0)  # warm-up (and compilation)
    seconds = median([time_hw3_epoch(r, e + 1) for e in range(args.rounds)])
    ips = n / seconds
    line = (
        f"{args.model} {args.image_size}px bf16={args.precision == 'bf16'} channels_last={args.channels_last} "
        f"compile={args.compile} batch {args.batch_size} {' '.join(args.set)}: {ips:,.0f} img/s"
    )
    peak = peak_tflops()
    if args.gflop and peak:
        line += f", {ips * args.gflop / 1e3:,.0f} TFLOP/s = {ips * args.gflop / 1e3 / peak:.1%} of {peak:g} bf16 peak"
    if torch.cuda.is_available():
        line += f", peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    print(line, flush=True)


if __name__ == "__main__":
    main()
