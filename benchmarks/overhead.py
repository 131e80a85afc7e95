"""hw3's training step against a minimal hand-written PyTorch loop: same model, same batch, same in-memory data
on the same device, epochs alternating in one process (this machine is noisy; the ratio is what counts).

    python benchmarks/overhead.py [--model simple_cnn] [--image-size 32] [--batch-size 256] [--steps 30] [--rounds 7]

hw3's epoch is the real `train_one_epoch`: device-resident batches, lr set per step, gradient norm, finiteness
check, device-side metric sums reduced at the end. The raw loop: index, normalize, forward, loss, backward, step.
Prints images/s of each and hw3 / raw (goal >= 0.97 on a CPU).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from common import hw3_run, median, sync, time_hw3_epoch

from hw3.models import build_model


def raw_setup(r):
    """The same architecture and initial weights, plain SGD, the same uint8 images on the same device."""
    cfg = r.cfg
    model = build_model(
        cfg.model, len(r.data.src.classes), r.data.stage.channels, r.data.stage.size, load_weights=False
    )
    model.load_state_dict(r.net.state_dict())
    model.to(r.accelerator.device).train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum)
    images = r.data.src.train.images.to(r.accelerator.device)
    labels = r.data.src.train.labels.to(r.accelerator.device)
    return model, opt, images, labels


def time_raw_epoch(model, opt, images, labels, stage, batch: int) -> float:
    device = images.device
    sync(device)
    start = time.perf_counter()
    perm = torch.randperm(len(labels), device=device)
    for i in range(0, len(labels), batch):
        idx = perm[i : i + batch]
        loss = F.cross_entropy(model(stage(images[idx])), labels[idx])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="simple_cnn")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--precision", default="no")
    args = p.parse_args()
    n = args.steps * args.batch_size
    r = hw3_run(
        [
            f"model.name={args.model}",
            f"data.image_size={args.image_size}",
            f"data.max_train_samples={n}",
            f"train.batch_size={args.batch_size}",
            "data.augment=none",
            "optim.name=sgd",
            "optim.lr=0.01",
            "optim.nesterov=false",
            f"train.mixed_precision={args.precision}",
            "train.epochs=1000",
        ]
    )
    raw = raw_setup(r)
    time_hw3_epoch(r, 0), time_raw_epoch(*raw, r.data.stage, args.batch_size)  # warm-up
    ours, theirs = [], []
    for round_ in range(args.rounds):  # pairs close in time, the order alternating (A B, B A, ...)
        pair = [
            lambda round_=round_: ours.append(time_hw3_epoch(r, round_ + 1)),
            lambda: theirs.append(time_raw_epoch(*raw, r.data.stage, args.batch_size)),
        ]
        for run in pair if round_ % 2 == 0 else pair[::-1]:
            run()
    ratios = sorted(t / o for o, t in zip(ours, theirs, strict=True))
    print(
        f"device {r.accelerator.device}, {args.model} at {args.image_size}px, batch {args.batch_size}, "
        f"{args.steps} steps per epoch, {args.rounds} paired epochs"
    )
    print(f"hw3 train_one_epoch: {n / median(ours):,.0f} img/s (median)")
    print(f"raw PyTorch loop:    {n / median(theirs):,.0f} img/s (median)")
    print(
        f"ratio hw3 / raw:     {median(ratios):.3f} (median of paired ratios; "
        f"quartiles {ratios[len(ratios) // 4]:.3f}-{ratios[3 * len(ratios) // 4]:.3f})"
    )


if __name__ == "__main__":
    main()
