"""hw3: image classification from YAML recipes on HuggingFace Accelerate, timm, torchvision and datasets."""

__version__ = "0.1.0"


def load_model(path: str, device: str = "cpu"):
    """Rebuild a trained model: `hw3.load_model("runs/quickstart")` (see hw3.models.load_model)."""
    from hw3.models import load_model as _load

    return _load(path, device)
