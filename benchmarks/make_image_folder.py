"""Write an image folder of N small PNGs (imagefolder layout: ROOT/train/<class>/*.png, ROOT/test/<class>/*.png),
class-templated noise like hw3's synthetic data, for the start-up measurements in BENCHMARKS.md.

    python benchmarks/make_image_folder.py ROOT [--images 20000] [--size 32] [--classes 10] [--test 0.1] [--link K]

`--link K` writes K distinct images and hard-links the others to them (same class): large folders in seconds, for
what costs per file (listing, stat, decoding) rather than what the pixels are.
"""

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path)
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--test", type=float, default=0.1, help="share of the images in test/")
    p.add_argument("--link", type=int, default=0, help="distinct images to write; the others are hard links")
    args = p.parse_args()
    distinct = args.link or args.images
    written: dict[int, Path] = {}
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 256, (args.classes, args.size, args.size, 3), dtype=np.uint8)
    for i in range(args.images):
        label = i % args.classes
        noise = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
        split = "test" if i < args.test * args.images else "train"
        folder = args.root / split / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        if i >= distinct:  # the same class: a distinct image written earlier with the same label
            os.link(written[label], folder / f"{i:06d}.png")
            continue
        Image.fromarray(templates[label] // 2 + noise // 2).save(folder / f"{i:06d}.png")
        written[label] = folder / f"{i:06d}.png"
    print(f"wrote {args.images} images of {args.size}x{args.size} px under {args.root}")


if __name__ == "__main__":
    main()
