"""What one SAM step costs against one step of its base optimizer: hw3's real training epoch with optim.name=sgd
and with optim.name=sam (base sgd), same model, weights, data and batch, epochs alternating in one process.

    python benchmarks/sam_cost.py [--model simple_cnn] [--image-size 32] [--batch-size 128] [--steps 20] [--rounds 7]

Prints images/s of each and the cost ratio sam / sgd (seconds per step; 2.0 would be exactly two passes).
"""

from __future__ import annotations

import argparse

from common import alternate, hw3_run, median, time_hw3_epoch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="simple_cnn")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--precision", default="no")
    args = p.parse_args()
    n = args.steps * args.batch_size
    common = [
        f"model.name={args.model}",
        f"data.image_size={args.image_size}",
        f"data.max_train_samples={n}",
        f"train.batch_size={args.batch_size}",
        f"train.mixed_precision={args.precision}",
        "optim.lr=0.01",
        "train.epochs=1000",
    ]
    runs = {
        name: hw3_run([*common, *extra]) for name, extra in (("sgd", ["optim.name=sgd"]), ("sam", ["optim.name=sam"]))
    }
    for r in runs.values():
        time_hw3_epoch(r, 0)  # warm-up
    sam, sgd = alternate(
        args.rounds, lambda epoch: time_hw3_epoch(runs["sam"], epoch), lambda epoch: time_hw3_epoch(runs["sgd"], epoch)
    )
    times = dict(sam=sam, sgd=sgd)
    ratios = sorted(a / b for a, b in zip(times["sam"], times["sgd"], strict=True))
    device = runs["sgd"].accelerator.device
    print(
        f"device {device}, {args.model} at {args.image_size}px, batch {args.batch_size}, {args.steps} steps per epoch"
    )
    for name in runs:
        print(f"{name}: {n / median(times[name]):,.0f} img/s (median of {args.rounds} epochs)")
    print(
        f"SAM step / SGD step: {median(ratios):.2f}x (median of paired ratios; quartiles "
        f"{ratios[len(ratios) // 4]:.2f}-{ratios[3 * len(ratios) // 4]:.2f})"
    )


if __name__ == "__main__":
    main()
