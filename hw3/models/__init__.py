"""Models: any timm model by name, plus hw3's two tiny ones (simple), the small-input stem for ResNets on small
images and pretrained weights (build), and the model card that rebuilds a trained network from its weights
(card: `hw3.load_model`). Import those modules by name; this one only checks a recipe's section.

`check_model` checks the recipe's `model` section without importing the model zoo: timm's model names are kept
in hw3's cache (written the first time timm itself is asked), and timm is imported only to build a model, or when
a name is not in that list (then timm gives the verdict and the "did you mean"). It may import hw3.errors,
hw3.config and hw3.storage; the heavy modules (timm, torchvision) are imported where a model is built.
"""

from __future__ import annotations

from hw3.config import ModelConfig
from hw3.config.rules import between, check_section
from hw3.models.names import cached_model_names


def check_model(cfg: ModelConfig) -> None:
    """The `model` section's values; the name is looked up in the cached list of timm's models first."""
    check_section(cfg, "model", {"drop_rate": between(0, 1)})
    if cfg.name.split(".")[0] not in cached_model_names():
        from hw3.models.build import check_model_name

        check_model_name(cfg.name)  # imports timm: the verdict, with the nearest name when it is wrong
