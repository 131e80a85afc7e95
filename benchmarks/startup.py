"""Start-up of a training launch on an image folder, and where its seconds go, beside an older hw3 checkout.

    python benchmarks/make_image_folder.py /tmp/png50k --images 50000 --link 10000    # 32 px PNGs (decoded once)
    python benchmarks/make_photos.py /tmp/jpg50k --images 50000 --link 3000           # mixed sizes (read per sample)
    python benchmarks/startup.py /tmp/png50k /tmp/jpg50k [--baseline /tmp/hw3-base] [--processes 1]

For each folder and checkout, a cold launch (nothing cached) then a warm one (the decoded images and timm's model
names cached by the first): seconds to the launch's first line of output, and to the end of its first training
step (hw3's own `startup_s`; each launch trains one step: train.max_steps=1). Then, in a fresh process, the data
preparation alone (hw3.data's load_source and the normalization statistics), its parts timed: listing the
files, their fingerprint (size and time of each, for the cache), reading image headers, decoding or the cache,
the channel statistics.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["data.name=imagefolder", "model.name=simple_cnn", "train.max_steps=1", "data.max_eval_samples=64"]
ARGS += ["log.trackers=[]", "train.epochs=1"]
PARTS = (  # (module, function) of every checkout measured; a part a checkout lacks is "-"
    ("hw3.data.image_folders", "scan"),
    ("hw3.data.image_folders", "files_fingerprint"),
    ("hw3.data.small_images", "common_side"),
    ("hw3.data.small_images", "cached"),
    ("hw3.data", "channel_stats"),
)
BREAKDOWN = """
import importlib, json, sys, time
from pathlib import Path
import torchvision.datasets.folder  # imported by any launch anyway (transforms, timm): not the listing's cost
parts, spent = {parts!r}, {{}}
for module, name in parts:
    m = importlib.import_module(module)
    if hasattr(m, name):
        real = getattr(m, name)
        def timed(*a, real=real, key=name, **k):
            t = time.perf_counter()
            try:
                return real(*a, **k)
            finally:
                spent[key] = spent.get(key, 0.0) + time.perf_counter() - t
        setattr(m, name, timed)
from hw3.config import DataConfig
from hw3.data import resolve_input
from hw3.data.sources import load_source
cfg = DataConfig(name="imagefolder", root={folder!r})
t = time.perf_counter()
src = load_source(cfg)
resolve_input(cfg, src, None)
spent["total"] = time.perf_counter() - t
print(json.dumps(spent))
"""


def env_for(checkout: Path, cache: Path) -> dict:
    return {**os.environ, "HW3_CACHE": str(cache), "PYTHONPATH": str(checkout), "PYTHONUNBUFFERED": "1"}


def launch(checkout: Path, folder: Path, processes: int, cache: Path, out: Path) -> tuple[float, float]:
    """(seconds to the first line of output, seconds to the end of the first step) of one launch."""
    cmd = [sys.executable, str(checkout / "train.py")]
    if processes > 1:
        config = checkout / "accelerate_configs" / "cpu_ddp.yaml"
        cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file", str(config)] + cmd[1:]
    cmd += ["--recipe", str(checkout / "recipes" / "quickstart.yaml"), f"data.root={folder}", *ARGS]
    cmd.append(f"output_dir={out}")
    started = time.perf_counter()
    child = subprocess.Popen(cmd, env=env_for(checkout, cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=checkout)  # fmt: skip
    first = child.stdout.readline()
    first_line = time.perf_counter() - started
    _, err = child.communicate()
    if child.returncode != 0 or not first:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-2000:]}")
    state = json.loads(sorted((out / "checkpoints").glob("epoch*"))[-1].joinpath("trainer_state.json").read_text())
    summary = out / "summary.json"  # an older hw3 ended its max_steps run with a summary
    launches = json.loads(summary.read_text())["launches"] if summary.is_file() else state["train"]["launches"]
    return first_line, launches[-1]["startup_s"]


def breakdown(checkout: Path, folder: Path, cache: Path) -> dict:
    code = BREAKDOWN.format(parts=list(PARTS), folder=str(folder))
    done = subprocess.run([sys.executable, "-c", code], env=env_for(checkout, cache), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", type=Path, nargs="+", help="image folders (make_image_folder.py, make_photos.py)")
    p.add_argument("--baseline", type=Path, help="an older hw3 checkout to time beside this one")
    p.add_argument("--processes", type=int, default=1)
    args = p.parse_args()
    checkouts = [("this checkout", ROOT)] + ([("baseline", args.baseline)] if args.baseline else [])
    names = [name for _, name in PARTS]
    print("| folder | hw3 | first line cold / warm (s) | first step cold / warm (s) | data preparation (s): "
          f"{', '.join(names)}, all (warm) |")  # fmt: skip
    print("|---|---|---|---|---|")
    for folder in args.folders:
        for label, checkout in checkouts:
            with tempfile.TemporaryDirectory() as tmp:
                cache = Path(tmp) / "cache"
                cold = launch(checkout, folder, args.processes, cache, Path(tmp) / "cold")
                warm = launch(checkout, folder, args.processes, cache, Path(tmp) / "warm")
                parts = breakdown(checkout, folder, cache)
            shown = ", ".join(f"{parts[n]:.2f}" if n in parts else "-" for n in [*names, "total"])
            print(f"| {folder.name} | {label} | {cold[0]:.1f} / {warm[0]:.1f} | {cold[1]:.1f} / {warm[1]:.1f} | "
                  f"{shown} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
