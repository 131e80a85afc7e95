"""`--print-config`: the recipe as the run would use it. Keys a recipe may leave null for hw3 to decide are shown
with the value hw3 decides and, in a comment, what decided it; a value that only the data can tell (an image
folder's size) says so. The output reads back as a recipe (comments are YAML comments)."""

from __future__ import annotations

import dataclasses
from typing import Optional

import yaml

from hw3.config.schema import Config
from hw3.runs.layout import default_run_dir


def image_size(cfg: Config) -> tuple[Optional[int], str]:
    """(the input size, why) without loading the data: the recipe's, the pretrained weights', a known dataset's."""
    from hw3.data.bundled import SHAPES
    from hw3.models.build import pretrained_data_config

    if cfg.data.image_size is not None:
        return cfg.data.image_size, "the recipe's"
    pretrained = pretrained_data_config(cfg.model)
    if pretrained:
        return pretrained["input_size"][-1], "the pretrained weights' input size"
    if cfg.data.name == "synthetic":
        return 32, "synthetic data's default"
    side = SHAPES.get(cfg.data.name, (None, None, None))[1]
    if side is not None:
        return side, f"the native size of {cfg.data.name}"
    if cfg.smoke:
        return 32, "the size of smoke mode's synthetic stand-in"
    return None, "the data's own size, read at start-up (native when every image has it, else 224)"


def resolved(cfg: Config, recipe: Optional[str]) -> tuple[Config, dict[str, str]]:
    """(the config with hw3's decisions filled in, {dotted key: what decided it})."""
    from hw3.engine.build import use_channels_last
    from hw3.models.build import SMALL_INPUT_MAX_SIZE, stem_adaptable

    why: dict[str, str] = {}
    out = cfg
    if cfg.output_dir is None:
        out = dataclasses.replace(out, output_dir=str(default_run_dir(recipe, cfg.smoke)))
        why["output_dir"] = "runs/<the recipe's file name>" + (" (smoke mode: runs/smoke/)" if cfg.smoke else "")
    if cfg.train.budget_passes is not None:
        from hw3.config.schema import passes_per_step

        why["train.epochs"] = (
            f"train.budget_passes {cfg.train.budget_passes:g} / {passes_per_step(cfg.optim):g} passes per epoch"
        )
    if cfg.train.channels_last is None:
        out = dataclasses.replace(out, train=dataclasses.replace(out.train, channels_last=use_channels_last(cfg)))
        why["train.channels_last"] = "on for the resnet and resnest families (BENCHMARKS.md), off otherwise"
    if cfg.optim.fused is None:
        out = dataclasses.replace(out, optim=dataclasses.replace(out.optim, fused=True))
        why["optim.fused"] = "torch's fused kernels for sgd/adam/adamw (they skip non-finite steps on the device)"
    size, size_why = image_size(cfg)
    if cfg.data.image_size is None:
        out = dataclasses.replace(out, data=dataclasses.replace(out.data, image_size=size))
        why["data.image_size"] = size_why
    if cfg.model.small_input is None:
        from_scratch = not (cfg.model.pretrained or cfg.model.pretrained_file)
        if size is not None or not (from_scratch and stem_adaptable(cfg.model.name)):
            small = from_scratch and stem_adaptable(cfg.model.name) and size <= SMALL_INPUT_MAX_SIZE
            out = dataclasses.replace(out, model=dataclasses.replace(out.model, small_input=small))
            why["model.small_input"] = (
                f"on for a from-scratch resnet/resnest at <= {SMALL_INPUT_MAX_SIZE} px; this is "
                f"{'from scratch' if from_scratch else 'pretrained'}, {cfg.model.name}, {size or '?'} px"
            )
        else:
            why["model.small_input"] = "decided at start-up from the data's image size"
    return out, why


def annotated_yaml(cfg: Config, recipe: Optional[str]) -> str:
    """The resolved recipe as block-style YAML, each value hw3 decided followed by `# hw3: <why>`."""
    filled, why = resolved(cfg, recipe)
    lines, section = [], None
    for line in yaml.safe_dump(dataclasses.asdict(filled), sort_keys=False, default_flow_style=False).splitlines():
        indent = len(line) - len(line.lstrip())
        key = line.strip().split(":", 1)[0]
        if indent == 0:
            section = key
        dotted = key if indent == 0 else f"{section}.{key}"
        if dotted in why and not line.strip().startswith("-"):
            line = f"{line}  # hw3: {why[dotted]}"
        lines.append(line)
    return "\n".join(lines) + "\n"
