"""The model card: what rebuilds a trained network around its exported weights (`model.json` beside
`model.safetensors` in best/), and `hw3.load_model`, which does it in one line."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from hw3.config import ModelConfig
from hw3.errors import UserError
from hw3.models.build import build_model
from hw3.runs.layout import BEST
from hw3.storage.manifest import check_weights


def model_card(cfg: ModelConfig, model: nn.Module, spec, classes: list[str], from_disk: bool, tta: str) -> dict:
    """Everything `load_model` needs to rebuild the network around exported weights, and to feed it as its
    evaluation did (hw3.predict): images read from disk were resized to size / crop_pct and center-cropped, a split
    held in memory was resized whole; the logits averaged over `tta`'s views."""
    return dict(
        name=cfg.name,
        num_classes=len(classes),
        in_chans=spec.channels,
        image_size=spec.size,
        small_input=model.hw3_small_input,
        drop_rate=cfg.drop_rate,
        kwargs=cfg.kwargs,
        mean=list(spec.mean),
        std=list(spec.std),
        crop_pct=spec.crop_pct,
        eval_resize="center_crop" if from_disk else "resize",
        tta=tta,
        classes=classes,
    )


def model_from_card(card: dict, weights: dict[str, torch.Tensor]) -> nn.Module:
    """The network a model card describes, holding `weights` (accelerate's 'module.'/'_orig_mod.' prefixes of
    DDP/compiled checkpoints are dropped)."""
    cfg = ModelConfig(
        name=card["name"], small_input=card["small_input"], drop_rate=card["drop_rate"], kwargs=card["kwargs"]
    )
    model = build_model(cfg, card["num_classes"], card["in_chans"], card["image_size"], load_weights=False)
    clean = {}
    for key, value in weights.items():
        for prefix in ("module.", "_orig_mod."):
            key = key.removeprefix(prefix)
        clean[key] = value
    try:
        model.load_state_dict(clean)
    except RuntimeError as e:
        raise UserError(f"weights do not fit {card['name']} ({str(e).strip().splitlines()[0][:160]})") from None
    model.hw3_card = card  # classes and the normalization the model was trained with
    return model.eval()


def load_model(path: str, device: str = "cpu") -> nn.Module:
    """Rebuild a trained model from a run dir, its `best/` folder, or a `model.safetensors` beside `model.json`.

    One line for users: `model = hw3.load_model("runs/quickstart")`. `model.hw3_card` holds the classes and
    the normalization the model was trained with.
    """
    from safetensors.torch import load_file

    p = Path(path)
    weights = (
        p
        if p.suffix == ".safetensors"
        else (p / BEST / "model.safetensors" if (p / BEST).is_dir() else p / "model.safetensors")
    )
    card_file = weights.with_name("model.json")
    if not weights.is_file() or not card_file.is_file():
        raise UserError(f"{path}: no model.safetensors with its model.json there")
    check_weights(weights, card_file)
    return model_from_card(json.loads(card_file.read_text()), load_file(str(weights))).to(device)
