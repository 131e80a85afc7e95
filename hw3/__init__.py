"""hw3: image classification from YAML recipes on HuggingFace Accelerate, timm, torchvision and datasets.

The packages, from the bottom up (each imports only those before it; tests/test_layout.py checks it):

    errors       the failures that end a launch in one line, and their exit codes
    config       the recipe's schema and reader; the tools components check their sections with
    storage      files written atomically, folders that verify themselves, the Hub, study storage
    dist         processes agreeing and failing together, signals, the launcher, fault points
    runs         the run directory: layout, lock, where a launch starts, checkpoints, best weights, metrics
    data, models, optim   the components, each built from (and checking) its own section
    engine       recipe -> Run -> fit: build, session, loop, step, what happens between steps, evaluation
    reports      tables and plots over run dirs, sweeps and searches
    experiments  sweeps and searches: many runs, launched as processes
    inference    a trained model: evaluate, predict, export
    cli          one thin module per command and the door they share (hw3.evaluate etc. are aliases)
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`hw3.load_model("runs/quickstart")` (hw3.models.card.load_model), imported on first use: `import hw3` stays
    light."""
    if name == "load_model":
        from hw3.models.card import load_model

        return load_model
    raise AttributeError(f"module 'hw3' has no attribute {name!r}")
