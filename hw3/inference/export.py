"""Hand a trained model to a runtime that is not hw3 (the command is hw3.cli.export):

- onnx: `model.onnx` (opset 18, batch size dynamic), run in onnxruntime on images of the run's own test (or
  validation) split against the PyTorch model; the largest logit difference is printed, and over 1e-3 it fails.
- torchscript: `model.pt` (torch.jit.trace), reloaded and checked the same way.
- hub: a folder to upload as it is (`huggingface-cli upload USER/NAME DIR`, or `HfApi().upload_folder`) and load
  with `timm.create_model("hf-hub:USER/NAME", pretrained=True)`: timm's own `config.json` (architecture,
  num_classes, label names, input size, mean, std, crop_pct) and `model.safetensors` (timm's save_for_hf),
  and a README model card (recipe, dataset, metrics, the training curves, the command that trained it). It is
  loaded back through timm's `local-dir:` source, as the Hub would serve it, and checked the same way.

Each is written into a folder of its own that holds `export.json`, written first: an earlier export there is
replaced, anything else refused, never deleted.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import warnings
from pathlib import Path
from typing import Sequence

import torch

from hw3.errors import UserError
from hw3.models.simple import NAMES as SIMPLE_MODELS
from hw3.reports.plots import plot_curves
from hw3.runs.layout import COMMAND, CONFIG, read_run

TOLERANCE = 1e-3  # largest logit difference a verified export may show (float32 kernels differ a little)


def sample_images(run_dir: Path, card: dict, overrides: Sequence[str], n: int = 16) -> torch.Tensor:
    """Up to n images of the run's test split (else validation), prepared as the model's evaluation prepares them."""
    from hw3.inference.evaluate import run_data

    _, data = run_data(run_dir, card, overrides, "cpu")
    split = "test" if data.src.test is not None else "val"
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
        crop_pct=card["crop_pct"],
    )
    # the pretrained_cfg timm keeps on the model is the architecture's default (ImageNet's, or hw3's 1 x 28 x 28):
    # the input this model was trained on replaces it
    model.pretrained_cfg = {**model.pretrained_cfg, **data_config}
    model_args = dict(in_chans=card["in_chans"], **card.get("kwargs", {}))
    if card["name"] in SIMPLE_MODELS:
        model_args["img_size"] = card["image_size"]
    save_for_hf(
        model, str(out), model_config=dict(label_names=card["classes"]), model_args=model_args,
        safe_serialization=True, data_config=data_config,
    )  # fmt: skip
    write_model_card(run_dir, card, out)
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    with torch.no_grad():
        return checked(largest_difference(model(x), loaded(x)), "hub")


def launch_commands(run_dir: Path) -> list[str]:
    """Each launch's command as it was typed (command.txt's `command:` lines; `python` + argv for older runs)."""
    lines = (run_dir / COMMAND).read_text().splitlines()
    typed = [line[len("command: ") :] for line in lines if line.startswith("command: ")]
    return typed or [f"python {line[len('argv: ') :]}" for line in lines if line.startswith("argv: ")]


def load_snippet(name: str) -> list[str]:
    """Python that loads the uploaded model, as written: hw3's own models must be registered with timm first."""
    register = (
        [f"import hw3.models.simple  # registers {name} with timm (pip install hw3)"] if name in SIMPLE_MODELS else []
    )
    return ["import timm", *register, 'model = timm.create_model("hf-hub:USER/NAME", pretrained=True)  # your repo']


def write_model_card(run_dir: Path, card: dict, out: Path) -> None:
    """README.md for the Hub: what was trained on what, with which recipe and command, and what it reached."""
    run = read_run(run_dir)
    summary = run.summary or {}
    plot_curves([run], out / "training_accuracy.png", "acc", "top-1 accuracy")
    metrics = {
        k: summary.get(k) for k in ("best_val_acc", "test_acc", "test_top5_acc", "test_loss", "epochs_completed")
    }
    lines = [
        "---",
        "library_name: timm",
        "tags: [image-classification, timm, hw3]",
        "---",
        f"# {card['name']} trained with hw3 on {run.cfg['data']['name']}",
        "",
        f"{card['num_classes']} classes, {card['image_size']} px, {card['in_chans']} channel(s); mean {card['mean']}, "
        f"std {card['std']}, crop_pct {card['crop_pct']}.",
        "",
        "```python",
        *load_snippet(card["name"]),
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
        *launch_commands(run_dir),
        "```",
        "",
        "The recipe (hw3's resolved config.yaml):",
        "",
        "```yaml",
        (run_dir / CONFIG).read_text().rstrip(),
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


def export(run_dir: Path, fmt: str, out: Path, opset: int, overrides: Sequence[str] = ()) -> tuple[float, int]:
    """Export the run's best weights as `fmt` into `out`, checked; returns (largest logit difference, images)."""
    from hw3.models.card import load_model

    model = load_model(str(run_dir)).float().eval()
    card = model.hw3_card
    x = sample_images(run_dir, card, overrides)
    fresh_folder(out)
    if fmt == "onnx":
        difference = export_onnx(model, x, out, opset)
    elif fmt == "torchscript":
        difference = export_torchscript(model, x, out)
    else:
        difference = export_hub(model, card, run_dir, x, out)
    (out / "export.json").write_text(json.dumps(dict(format=fmt, max_abs_logit_difference=difference), indent=1))
    return difference, len(x)
