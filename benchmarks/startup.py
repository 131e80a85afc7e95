"""Start-up to the first training step on an image folder of small PNGs, cold (nothing cached) and warm (the
decoded images cached by hw3.data.cache), with 1 and 2 processes; optionally beside an older hw3 checkout.

    python benchmarks/make_image_folder.py /tmp/folder20k            # 20,000 PNGs of 32x32 (BENCHMARKS.md)
    python benchmarks/startup.py /tmp/folder20k [--baseline /path/to/older/hw3] [--repeats 2]

Each launch trains one step (train.max_steps=1) with small evaluation splits; hw3 records the seconds from the
process's start to the end of its first step as `startup_s` in summary.json's launches. An older checkout that
does not record it is timed from outside (the whole command, a little more than its start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["data.name=imagefolder", "model.name=simple_cnn", "train.max_steps=1", "data.max_eval_samples=64"]
ARGS += ["log.trackers=[]", "train.epochs=1"]


def launch(checkout: Path, folder: Path, processes: int, cache: Path, out: Path) -> float:
    """Seconds to the first step of one launch (hw3's own record, or the command's wall time)."""
    cmd = [sys.executable, str(checkout / "train.py")]
    if processes > 1:
        config = checkout / "accelerate_configs" / "cpu_ddp.yaml"
        cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file", str(config)] + cmd[1:]
    cmd += ["--recipe", str(checkout / "recipes" / "quickstart.yaml"), f"data.root={folder}", *ARGS]
    cmd.append(f"output_dir={out}")
    env = {**os.environ, "HW3_CACHE": str(cache), "PYTHONPATH": str(checkout), "HF_DATASETS_CACHE": str(cache / "hf")}
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=checkout)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    launches = json.loads((out / "summary.json").read_text()).get("launches", [{}])
    return launches[-1].get("startup_s", wall)


def measure(checkout: Path, folder: Path, processes: int, repeats: int) -> tuple[float, float]:
    """(cold, warm) start-up in seconds, each the median of `repeats` launches."""
    cold, warm = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "cache"
            cold.append(launch(checkout, folder, processes, cache, Path(tmp) / "cold"))
            warm.append(launch(checkout, folder, processes, cache, Path(tmp) / "warm"))
            shutil.rmtree(cache, ignore_errors=True)
    return statistics.median(cold), statistics.median(warm)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="an image folder (benchmarks/make_image_folder.py)")
    p.add_argument("--baseline", type=Path, help="an older hw3 checkout to time beside this one")
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    rows = [("this checkout", ROOT)] + ([("baseline", args.baseline)] if args.baseline else [])
    print("| hw3 | processes | cold start-up (s) | warm start-up (s) | cold / warm |")
    print("|---|---|---|---|---|")
    for name, checkout in rows:
        for processes in (1, 2):
            cold, warm = measure(checkout, args.folder, processes, args.repeats)
            print(f"| {name} | {processes} | {cold:.1f} | {warm:.1f} | {cold / warm:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
