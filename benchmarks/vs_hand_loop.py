"""hw3's training step against a hand-written PyTorch loop, side by side in one process, on the same device:
same model and initial weights, same precision, layout, batch, optimizer (SGD + Nesterov, hw3's fused setting)
and in-memory uint8 data (CIFAR-shaped, no augmentation on either side), the same torch.compile mode. Epochs of
`--steps` steps alternate between the two; the medians and the median of paired ratios are printed.

    python benchmarks/vs_hand_loop.py --model resnet18 --batch-size 512 [--compile reduce-overhead] [--sam]
        [--image-size 32] [--precision bf16] [--channels-last] [--steps 40] [--rounds 5] [--set key=value ...]

Above 64 px (--image-size 224) the images are made at 32 px and resized on the device, as
recipes/cifar100_resnet50_pretrained.yaml does. --sam compares hw3's SAM (BatchNorm statistics of pass 1, the
non-finite guard) with a bare two-pass SAM.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from common import alternate, hw3_run, median, resized_data, sync, time_hw3_epoch

from hw3.models.build import build_model


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
            f"data.image_size={args.image_size if args.image_size <= 64 else 32}",  # larger: resized on the device
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
    if args.image_size > 64:
        run.data = resized_data(run, args.image_size, n, args.channels_last)
    hand = hand_setup(run, args.compile, args.channels_last)
    rho = 0.05 if args.sam else None
    started = time.perf_counter()
    time_hw3_epoch(run, 0)  # warm-up, and compilation
    hand_epoch(hand, run.data.stage, args.batch_size, args.precision, rho)
    warmup = time.perf_counter() - started
    ours, theirs = alternate(
        args.rounds,
        lambda epoch: time_hw3_epoch(run, epoch),
        lambda epoch: hand_epoch(hand, run.data.stage, args.batch_size, args.precision, rho),
    )
    ratios = sorted(t / o for o, t in zip(ours, theirs, strict=True))
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    memory = f" | peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if torch.cuda.is_available() else ""
    print(
        f"{name} | {args.model} {args.image_size}px batch {args.batch_size} {args.precision} "
        f"{'NHWC' if args.channels_last else 'NCHW'} compile={args.compile or 'off'}{' SAM' if args.sam else ''} "
        f"{' '.join(args.set)}| hw3 {n / median(ours):,.0f} img/s | hand loop {n / median(theirs):,.0f} img/s | "
        f"hw3/hand {median(ratios):.3f} (quartiles {ratios[len(ratios) // 4]:.3f}-{ratios[3 * len(ratios) // 4]:.3f})"
        f" | warm-up {warmup:.0f} s{memory}",
        flush=True,
    )


if __name__ == "__main__":
    main()
