"""Move a dataset to the streamed path (`data.name: shards`):

    python -m hw3.shards write --out DIR [--samples-per-shard 1000] [--format tar|parquet] [--seed 0]
        [--recipe R] data.name=... [key=value ...]
    python -m hw3.shards index 'PATTERN' [--out FILE] [--classes N]

`write` reads the dataset the `data` keys name (an image folder, a torchvision set, a Hub dataset: anything
`data.name` reads) and writes each split as shards with `index.json` (hw3.data.shards.writer); then train with
`data.name=shards data.path=DIR`, and copy DIR to an object store to stream it from there. `index` lists existing
WebDataset tar shards (a brace pattern or glob, local or at any URL) with their sample counts into an index.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional, Sequence

from hw3.cli import Parser, at_least_one, program, run_command
from hw3.errors import UserError


def parse_shards_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = Parser(prog="python -m hw3.shards", description=__doc__.split("\n\n")[0])
    commands = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    write = commands.add_parser("write", help="write a dataset as shards with their index")
    write.add_argument("--out", type=Path, required=True, help="the folder the shards and index.json go into")
    write.add_argument("--samples-per-shard", type=int, default=1000)
    write.add_argument("--format", choices=["tar", "parquet"], default="tar")
    write.add_argument("--seed", type=int, default=0, help="of the order the samples are written in")
    write.add_argument("--recipe", help="a recipe whose data section to read (its keys can be overridden)")
    write.add_argument("overrides", nargs="*", metavar="key=value", help="data.name=imagefolder data.root=...")
    index = commands.add_parser("index", help="index existing WebDataset tar shards")
    index.add_argument("pattern", help="a brace pattern or glob of .tar shards (any fsspec URL)")
    index.add_argument("--out", help="the index file (default: index.json beside the shards)")
    index.add_argument("--classes", type=int, help="how many classes (default: the largest label + 1)")
    args = p.parse_args(argv)
    if args.command == "write":
        at_least_one(samples_per_shard=args.samples_per_shard)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    def body() -> int:
        args = parse_shards_args(argv)
        if args.command == "write":
            from hw3.data import open_source
            from hw3.data.shards.writer import write_shards
            from hw3.engine.recipe import load_recipe

            cfg = load_recipe(args.recipe, args.overrides)
            if cfg.data.name == "shards" or cfg.data.streaming:
                raise UserError("data.name: the dataset to write must not be a streamed one")
            index = write_shards(open_source(cfg.data), args.out, args.samples_per_shard, args.format, args.seed)
            total = sum(s.samples for shards in index.splits.values() for s in shards)
            print(f"wrote {total:,} samples of {len(index.classes)} classes to {args.out}; train with "
                  f"data.name=shards data.path={args.out}")  # fmt: skip
            return 0
        from hw3.data.shards.index import INDEX
        from hw3.data.shards.writer import index_tar_shards
        from hw3.storage.files import write_atomic
        from hw3.storage.remote import expand, is_local

        urls = [os.path.abspath(u.removeprefix("file://")) if is_local(u) else u for u in expand(args.pattern)]
        if not urls or not all(u.endswith(".tar") for u in urls):
            raise UserError(f"{args.pattern}: names no .tar shards")
        out = args.out or f"{urls[0].rsplit('/', 1)[0]}/{INDEX}"  # beside the shards
        if not is_local(out):
            raise UserError(f"--out: write the index to a local file, then copy it beside the shards ({out})")
        out = Path(os.path.abspath(out.removeprefix("file://")))
        classes = [str(i) for i in range(args.classes)] if args.classes else None
        index = index_tar_shards(urls, classes)
        write_atomic(out, index.to_json(relative_to=str(out.parent)).encode())  # shards beside it: named relatively
        print(f"indexed {sum(s.samples for s in index.splits['train']):,} samples in {len(urls)} shards: {out}")
        return 0

    return run_command(body)


if __name__ == "__main__":
    program(main)
