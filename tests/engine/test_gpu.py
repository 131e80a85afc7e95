"""On a CUDA machine: fp16 with GradScaler (+ SAM), bf16, and the device-resident input path on the GPU."""

import pytest
import torch

from helpers import RECIPES, read_metrics, read_summary

pytestmark = pytest.mark.gpu
QUICK = RECIPES / "quickstart.yaml"


@pytest.mark.parametrize("precision, optim", [("fp16", "adamw"), ("fp16", "sam"), ("bf16", "sam")])
def test_quickstart_on_the_gpu(train, tmp_path, precision, optim):
    result = train(
        "--recipe",
        QUICK,
        f"train.mixed_precision={precision}",
        f"optim.name={optim}",
        "optim.base=adamw",
        "train.epochs=8",
        f"output_dir={tmp_path / 'run'}",
    )
    assert result.code == 0, result.err
    assert read_summary(tmp_path / "run")["test_acc"] >= 0.9
    rows = read_metrics(tmp_path / "run")
    if precision == "fp16":
        assert all(r["loss_scale"] is not None and r["loss_scale"] >= 1 for r in rows)


def test_device_path_on_the_gpu_matches_the_cpu():
    from hw3.config import DataConfig
    from hw3.data import Data, InputSpec
    from hw3.data.sources import load_source

    src = load_source(DataConfig(name="synthetic", max_train_samples=256, augment="crop_flip"))
    spec = InputSpec(32, 3, [0.5] * 3, [0.25] * 3)
    cpu = Data(DataConfig(name="synthetic", loader="device"), src, spec, torch.device("cpu"), 1, 0, 0)
    gpu = Data(DataConfig(name="synthetic", loader="device"), src, spec, torch.device("cuda"), 1, 0, 0)
    for (a, _), (b, _) in zip(cpu.train_batches(3, 64), gpu.train_batches(3, 64), strict=True):
        assert torch.allclose(a, b.cpu(), atol=1e-5)


def test_cuda_graphs_train_sam_in_bf16(train, tmp_path):
    """torch.compile(mode="reduce-overhead") replays CUDA graphs: SAM's two passes, the device-side non-finite
    guard and the running sums must all survive replays that reuse their output buffers."""
    result = train(
        "--recipe",
        QUICK,
        "train.compile=reduce-overhead",
        "train.mixed_precision=bf16",
        "optim.name=sam",
        "optim.base=adamw",
        "train.epochs=6",
        f"output_dir={tmp_path / 'run'}",
    )
    assert result.code == 0, result.err
    summary = read_summary(tmp_path / "run")
    assert summary["test_acc"] >= 0.9 and summary["optimizer_steps"] == 6 * 20  # full batches only
