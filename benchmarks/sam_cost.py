"""What a step of each SAM variant costs against one step of its base optimizer: hw3's real training epoch with
optim.name=sgd and with each variant (base sgd), same model, weights, data and batch, in one process, every round
timing SGD and all variants in a rotating order, each variant's cost the ratio to the SGD epoch of its round.

    python benchmarks/sam_cost.py [--model simple_cnn] [--image-size 32] [--batch-size 128] [--steps 20] [--rounds 7]

Prints images/s of each and the cost ratio variant / sgd (seconds per step; 2.0 would be exactly two passes),
next to the passes each step spends as hw3 counts them.
"""

from __future__ import annotations

import argparse

from common import hw3_run, median, time_hw3_epoch

VARIANTS = {
    "sgd": ["optim.name=sgd"],
    "sam": ["optim.name=sam"],
    "asam": ["optim.name=sam", "optim.adaptive=true", "optim.rho=0.5"],
    "sam every 2": ["optim.name=sam", "optim.sam_every=2"],
    "sam every 5": ["optim.name=sam", "optim.sam_every=5"],
    "looksam k=5": ["optim.name=sam", "optim.sam_variant=looksam", "optim.sam_every=5"],
    "momentum sam": ["optim.name=sam", "optim.sam_variant=momentum"],
    "sam, m-sharpness 4": ["optim.name=sam", "optim.sam_batch_splits=4"],
}


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
    runs = {name: hw3_run([*common, *extra]) for name, extra in VARIANTS.items()}
    for r in runs.values():
        time_hw3_epoch(r, 0)  # warm-up
    names, times = list(runs), {name: [] for name in runs}
    for epoch in range(1, args.rounds + 1):
        shift = epoch % len(names)
        for name in names[shift:] + names[:shift]:  # a noisy machine slows all alike over the rounds
            times[name].append(time_hw3_epoch(runs[name], epoch))
    device = runs["sgd"].accelerator.device
    print(f"device {device}, {args.model} at {args.image_size}px, batch {args.batch_size}, {args.steps} steps/epoch")
    print("| variant | img/s | step cost / SGD (median of paired ratios, quartiles) | passes per step (counted) |")
    print("|---|---|---|---|")
    for name in names:
        ratios = sorted(a / b for a, b in zip(times[name], times["sgd"], strict=True))
        r = runs[name]
        passes = r.state.image_passes / (r.state.step * args.batch_size)
        print(
            f"| {name} | {n / median(times[name]):,.0f} | {median(ratios):.2f}x ({ratios[len(ratios) // 4]:.2f}-"
            f"{ratios[3 * len(ratios) // 4]:.2f}) | {passes:.2f} |"
        )


if __name__ == "__main__":
    main()
