"""Fixtures shared by every test module; plain helpers are in helpers.py."""

from __future__ import annotations

import pytest

from helpers import Result


@pytest.fixture
def train(capsys):
    """Call the CLI's main() in this process: the same code path as train.py, minus interpreter start-up."""
    from hw3.cli.train import main

    def _train(*args) -> Result:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return _train


@pytest.fixture(scope="session")
def digit_shards(tmp_path_factory):
    """The digits (1,294 train / 144 val / 359 test) written as tar shards of 200 by `python -m hw3.shards`."""
    from hw3.cli.shards import main as shards_main

    out = tmp_path_factory.mktemp("shards") / "digits"
    assert shards_main(["write", "--out", str(out), "--samples-per-shard", "200", "data.name=digits"]) == 0
    return out


@pytest.fixture(autouse=True)
def reset_accelerate():
    """accelerate keeps process-wide singletons; start every test from a clean slate."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA: skipped (not failed) on machines without it, so plain `pytest` passes everywhere."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
