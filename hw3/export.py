"""Hand a trained model to a runtime that is not hw3:

    python -m hw3.export RUN_DIR --format onnx|torchscript|hub [--out DIR] [--opset 18]

- onnx: `model.onnx` (opset 18, batch size dynamic), run in onnxruntime on images of the run's own test (or
  validation) split against the PyTorch model; the largest logit difference is printed, and over 1e-3 it fails.
- torchscript: `model.pt` (torch.jit.trace), reloaded and checked the same way.
- hub: a folder to upload as it is (`huggingface-cli upload USER/NAME DIR`, or `HfApi().upload_folder`) and load
  with `timm.create_model("hf-hub:USER/NAME", pretrained=True)`: timm's own `config.json` (architecture,
  num_classes, label names, input size, mean, std, crop_pct) and `model.safetensors` (timm's save_for_hf),
  and a README model card (recipe, dataset, metrics, the training curves, the command that trained it). It is
  loaded back through timm's `local-dir:` source, as the Hub would serve it, and checked the same way.

Writes into RUN_DIR/export/<format>/ unless --out is given; the exit status is 2 for a mistake in the command.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch

from hw3.cli import Parser, one_line
from hw3.errors import UserError

TOLERANCE = 1e-3  # largest logit difference a verified export may show (float32 kernels differ a little)


def parse_export_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = Parser(prog="python -m hw3.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a run directory (its best weights are exported)")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript", "hub"])
    p.add_argument("--out", type=Path, help="default: RUN_DIR/export/<format>")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="applied to the run's config (data.root=...)")
    return p.parse_args(argv)


def sample_images(run_dir: Path, card: dict, overrides: Sequence[str], n: int = 16) -> torch.Tensor:
    """Up to n images of the run's test split (else validation), prepared as the model's evaluation prepares them."""
    from hw3.config import load_config
    from hw3.data import Data, InputSpec
    from hw3.data.sources import load_source, smoke_source

    cfg = load_config(str(run_dir / "config.yaml"), list(overrides))
    src = smoke_source(cfg.data) if cfg.smoke else load_source(cfg.data)
    split = "test" if src.test is not None else "val"
    spec = InputSpec(card["image_size"], card["in_chans"], card["mean"], card["std"], card.get("crop_pct", 0.875))
    data = Data(cfg.data, src, spec, torch.device("cpu"), 1, 0, cfg.seed)
    return next(iter(data.eval_batches(split, n)))[0]


def largest_difference(reference: torch.Tensor, other) -> float:
    return float((reference - torch.as_tensor(other)).abs().max())


def checked(difference: float, what: str) -> float:
    if difference > TOLERANCE:
        raise UserError(
            f"{what}: the exported model's logits differ from PyTorch's by {difference:.2e} (over {TOLERANCE:g})"
        )
    return difference


def export_onnx(model, x: torch.Tensor, out: Path, opset: int) -> float:
    """model.onnx with a dynamic batch; returns the largest logit difference in onnxruntime on `x` (checked on a
    batch of another size too)."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError("--format onnx needs onnx, onnxscript and onnxruntime: pip install -e '.[export]'") from None
    path = out / "model.onnx"
    batch = torch.export.Dim("batch", min=1)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates its passes on stdout
        torch.onnx.export(
            model, (x,), str(path), input_names=["images"], output_names=["logits"], opset_version=opset,
            dynamic_shapes=({0: batch},), external_data=False, verbose=False,
        )  # fmt: skip
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        differences = [
            largest_difference(model(part), session.run(None, {"images": part.numpy()})[0]) for part in (x, x[:3])
        ]
    return checked(max(differences), "onnx")


def export_torchscript(model, x: torch.Tensor, out: Path) -> float:
    path = out / "model.pt"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.10 calls TorchScript deprecated; it still works
        torch.jit.save(torch.jit.trace(model, x), str(path))
        loaded = torch.jit.load(str(path))
        differences = [largest_difference(model(part), loaded(part)) for part in (x, x[:3])]
    return checked(max(differences), "torchscript")


def export_hub(model, card: dict, run_dir: Path, x: torch.Tensor, out: Path) -> float:
    """timm's save_for_hf (config.json + model.safetensors), a model card, the training curves; loaded back with
    timm from the folder the way the Hub serves it."""
    import timm
    from timm.models import save_for_hf

    if card["small_input"]:
        raise UserError(
            "--format hub: this model has hw3's small-input stem, which timm alone cannot rebuild; load it with "
            "hw3.load_model, or export --format onnx / torchscript"
        )
    data_config = dict(
        input_size=(card["in_chans"], card["image_size"], card["image_size"]),
        mean=tuple(card["mean"]),
        std=tuple(card["std"]),
        crop_pct=card.get("crop_pct", 0.875),
    )
    # the pretrained_cfg timm keeps on the model is the architecture's default (ImageNet's, or hw3's 1 x 28 x 28):
    # the input this model was trained on replaces it
    model.pretrained_cfg = {**model.pretrained_cfg, **data_config}
    model_args = dict(in_chans=card["in_chans"], **card.get("kwargs", {}))
    if card["name"] in ("simple_mlp", "simple_cnn"):
        model_args["img_size"] = card["image_size"]
    save_for_hf(
        model, str(out), model_config=dict(label_names=card["classes"]), model_args=model_args,
        safe_serialization=True, data_config=data_config,
    )  # fmt: skip
    write_model_card(run_dir, card, out)
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    with torch.no_grad():
        return checked(largest_difference(model(x), loaded(x)), "hub")


def write_model_card(run_dir: Path, card: dict, out: Path) -> None:
    """README.md for the Hub: what was trained on what, with which recipe and command, and what it reached."""
    from hw3.report import plot_curves, read_run

    run = read_run(run_dir)
    summary = run["summary"] or {}
    plot_curves([run], out / "training_accuracy.png", "acc", "top-1 accuracy")
    commands = [
        line[len("argv: ") :]
        for line in (run_dir / "command.txt").read_text().splitlines()
        if line.startswith("argv: ")
    ]
    metrics = {
        k: summary.get(k) for k in ("best_val_acc", "test_acc", "test_top5_acc", "test_loss", "epochs_completed")
    }
    lines = [
        "---",
        "library_name: timm",
        "tags: [image-classification, timm, hw3]",
        "---",
        f"# {card['name']} trained with hw3 on {run['cfg']['data']['name']}",
        "",
        f"{card['num_classes']} classes, {card['image_size']} px, {card['in_chans']} channel(s); mean {card['mean']}, "
        f"std {card['std']}, crop_pct {card.get('crop_pct', 0.875)}.",
        "",
        "```python",
        "import timm",
        'model = timm.create_model("hf-hub:USER/NAME", pretrained=True)  # the repo this folder is uploaded to',
        "```",
        "",
        "## Metrics",
        "",
        *(f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in metrics.items() if v is not None),
        "",
        "![training curves](training_accuracy.png)",
        "",
        "## How it was trained",
        "",
        "```bash",
        *(f"python {c}" for c in commands),
        "```",
        "",
        "The recipe (hw3's resolved config.yaml):",
        "",
        "```yaml",
        (run_dir / "config.yaml").read_text().rstrip(),
        "```",
    ]
    (out / "README.md").write_text("\n".join(lines) + "\n")


def fresh_folder(out: Path) -> None:
    """An empty `out`: an earlier export there (it holds export.json, written first) is replaced; anything else
    that is not empty is refused, never deleted."""
    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not (out / "export.json").is_file()):
            raise UserError(f"--out: {out} exists and is not an hw3 export; give a new or empty folder")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "export.json").write_text(json.dumps(dict(status="started")))  # marks the folder as an export's


def export_main(argv: Optional[Sequence[str]] = None) -> int:
    from hw3.models import load_model

    try:
        args = parse_export_args(argv)
        model = load_model(str(args.run_dir)).float().eval()
        card = model.hw3_card
        x = sample_images(args.run_dir, card, args.overrides)
        out = args.out or args.run_dir / "export" / args.format
        fresh_folder(out)
        if args.format == "onnx":
            difference = export_onnx(model, x, out, args.opset)
        elif args.format == "torchscript":
            difference = export_torchscript(model, x, out)
        else:
            difference = export_hub(model, card, args.run_dir, x, out)
    except UserError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    opset = f", opset {args.opset}" if args.format == "onnx" else ""
    print(
        f"{args.format}{opset}: {out} (largest logit difference to PyTorch on {len(x)} test images: {difference:.2e})"
    )
    (out / "export.json").write_text(
        json.dumps(dict(format=args.format, max_abs_logit_difference=difference), indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(export_main())
