"""hw3's training step against a hand-written PyTorch loop, side by side in one process, on the same device:
same model and initial weights, same precision, layout, batch, optimizer (SGD + Nesterov, hw3's fused setting)
and in-memory uint8 data (CIFAR-shaped, no augmentation on either side), the same torch.compile mode. Epochs of
`--steps` steps alternate between the two; the medians and the median of paired ratios are printed.

    python benchmarks/gpu_step.py --model resnet18 --batch-size 512 [--compile reduce-overhead] [--sam]
        [--image-size 32] [--precision bf16] [--channels-last] [--steps 40] [--rounds 5] [--set key=value ...]

With --image-size 224 the 32 px images are resized on the device, as recipes/cifar100_resnet50_pretrained.yaml
does. --sam compares hw3's SAM (BatchNorm statistics of pass 1, non-finite guard) with a bare two-pass SAM.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from common import hw3_run, median, sync, time_hw3_epoch

from hw3.config import DataConfig
from hw3.data import Data, InputSpec
from hw3.data.sources import synthetic
from hw3.models import build_model


def hand_setup(run, mode: str | None, channels_last: bool):
    """The same architecture and weights as hw3's model, compiled the same way, and plain fused SGD."""
    cfg = run.cfg
    model = build_model(cfg.model, len(run.data.src.classes), run.data.stage.channels, run.data.stage.size, False)
    model.load_state_dict(run.net.state_dict())
    model.to(run.accelerator.device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    model.train()
    fused = run.cfg.optim.fused is not False
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=0.9, nesterov=True, fused=fused)
    compiled = torch.compile(model, mode=mode) if mode else model
    images = run.data.src.train.images.to(run.accelerator.device)
    labels = run.data.src.train.labels.to(run.accelerator.device)
    return model, compiled, opt, images, labels


def hand_epoch(setup, stage, batch: int, precision: str, rho: float | None) -> float:
    """Seconds for one epoch: index, normalize (and resize), forward, loss, backward, (SAM: perturb, second
    pass, restore), step."""
    model, compiled, opt, images, labels = setup
    device = images.device
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    sync(device)
    start = time.perf_counter()
    perm = torch.randperm(len(labels), device=device)
    for i in range(0, len(labels) - batch + 1, batch):
        idx = perm[i : i + batch]
        x, y = stage(images[idx]), labels[idx]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(compiled(x), y)
        loss.backward()
        if rho is not None:
            params = [p for p in model.parameters() if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])))
            e = torch._foreach_mul([p.grad for p in params], rho / (norm + 1e-12))
            with torch.no_grad():
                torch._foreach_add_(params, e)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(compiled(x), y)
            loss.backward()
            with torch.no_grad():
                torch._foreach_sub_(params, e)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", default=None, help="torch.compile mode: default, reduce-overhead, max-autotune")
    p.add_argument("--sam", action="store_true")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--set", nargs="*", default=[], metavar="key=value", help="further hw3 recipe overrides")
    args = p.parse_args()
    n = args.steps * args.batch_size
    run = hw3_run(
        [
            f"model.name={args.model}",
            f"data.max_train_samples={n}",
            "data.image_size=32",
            "data.augment=none",
            f"train.batch_size={args.batch_size}",
            f"optim.name={'sam' if args.sam else 'sgd'}",
            "optim.base=sgd",
            "optim.lr=0.01",
            "optim.rho=0.05",
            "train.epochs=1000",
            f"train.mixed_precision={args.precision}",
            f"train.channels_last={str(args.channels_last).lower()}",
            f"train.compile={args.compile or 'false'}",
            *args.set,
        ]
    )
    if args.image_size != 32:  # CIFAR-sized images, resized on the device like the pretrained recipe
        src = synthetic(DataConfig(name="synthetic", image_size=32, max_train_samples=n, max_eval_samples=64))
        spec = InputSpec(args.image_size, 3, [0.5] * 3, [0.25] * 3)
        run.data = Data(run.cfg.data, src, spec, run.accelerator.device, 1, 0, 0, channels_last=args.channels_last)
    hand = hand_setup(run, args.compile, args.channels_last)
    rho = 0.05 if args.sam else None
    started = time.perf_counter()
    time_hw3_epoch(run, 0)  # warm-up, and compilation
    hand_epoch(hand, run.data.stage, args.batch_size, args.precision, rho)
    warmup = time.perf_counter() - started
    ours, theirs = [], []
    for round_ in range(args.rounds):  # pairs close in time, the order alternating
        pair = [
            lambda round_=round_: ours.append(time_hw3_epoch(run, round_ + 1)),
            lambda: theirs.append(hand_epoch(hand, run.data.stage, args.batch_size, args.precision, rho)),
        ]
        for measure in pair if round_ % 2 == 0 else pair[::-1]:
            measure()
    ratios = sorted(t / o for o, t in zip(ours, theirs, strict=True))
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(
        f"{name} | {args.model} {args.image_size}px batch {args.batch_size} {args.precision} "
        f"{'NHWC' if args.channels_last else 'NCHW'} compile={args.compile or 'off'}{' SAM' if args.sam else ''} "
        f"{' '.join(args.set)}| hw3 {n / median(ours):,.0f} img/s | hand loop {n / median(theirs):,.0f} img/s | "
        f"hw3/hand {median(ratios):.2f} | warm-up {warmup:.0f} s",
        flush=True,
    )


if __name__ == "__main__":
    main()
