"""Write an image folder of N photos of mixed sizes (JPEGs of 64 to 320 px a side, two classes, smooth random
blobs), like a small photo dataset, for the input-path measurements in BENCHMARKS.md. `--link K` writes K
distinct images and hard-links the rest to them: a folder of 200,000 files in a minute, for what costs per file
(listing, stat) rather than per decoded pixel.

    python benchmarks/make_photos.py ROOT [--images 3000] [--link 0]
"""

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path)
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--link", type=int, default=0, help="distinct images to write; the others are hard links")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    distinct = args.link or args.images
    for i in range(args.images):
        label = i % 2
        folder = args.root / "train" / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:07d}.jpg"
        if i >= distinct:
            os.link(
                args.root / "train" / f"class_{label}" / f"{i % distinct - (i % distinct) % 2 + label:07d}.jpg", path
            )
            continue
        h, w = rng.integers(64, 321, 2)
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8) // (2 - label)
        Image.fromarray(small).resize((int(w), int(h)), Image.BICUBIC).save(path, quality=90)
    print(f"wrote {args.images} photos ({distinct} distinct) under {args.root}")


if __name__ == "__main__":
    main()
