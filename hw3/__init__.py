"""hw3: image classification from YAML recipes on HuggingFace Accelerate, timm, torchvision and datasets."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`hw3.load_model("runs/quickstart")` (hw3.models.load_model), imported on first use: `import hw3` stays light."""
    if name == "load_model":
        from hw3.models import load_model

        return load_model
    raise AttributeError(f"module 'hw3' has no attribute {name!r}")
