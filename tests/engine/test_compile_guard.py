"""torch.compile never kills a run: when compilation fails at the first step (here: inductor made to raise, in the
forward or, lazily, in the backward), hw3 warns once and trains that same step eagerly, so the run equals one
that never compiled, bit for bit. Recompilations (or CUDA-graph recordings) that go on after the warm-up are
reported once."""

import pytest
import torch
from safetensors.torch import load_file

from hw3.engine.compile_guard import CompileGuard

from helpers import RECIPES, deterministic, read_metrics

QUICK = RECIPES / "quickstart.yaml"
ARGS = ["--recipe", QUICK, "train.epochs=2", "log.trackers=[]", "train.ema_decay=0.9", "train.mixup=0.2"]


def planted(*args, **kwargs):
    raise RuntimeError("planted compiler failure")


@pytest.fixture(scope="module")
def eager(tmp_path_factory):
    from hw3.cli.train import main

    run_dir = tmp_path_factory.mktemp("compile") / "eager"
    assert main([str(a) for a in [*ARGS, f"output_dir={run_dir}"]]) == 0
    return run_dir


def assert_same_as(run_dir, reference):
    assert deterministic(read_metrics(run_dir)) == deterministic(read_metrics(reference))
    for name in ("model.safetensors", "ema.safetensors"):
        mine, theirs = (load_file(str(d / "checkpoints/epoch0001-batch000021" / name)) for d in (run_dir, reference))
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_a_failing_compile_falls_back_to_eager_at_the_same_step(train, eager, tmp_path, monkeypatch):
    import torch._inductor.compile_fx

    torch._dynamo.reset()  # no compiled code left over from another test
    monkeypatch.setattr(torch._inductor.compile_fx, "compile_fx", planted)
    result = train(*ARGS, "train.compile=default", f"output_dir={tmp_path / 'run'}")
    assert result.code == 0, result.err
    warnings = [line for line in result.err.splitlines() if line.startswith("warning: torch.compile")]
    assert warnings == [
        "warning: torch.compile failed at the first step (BackendCompilerFailed: backend='inductor' raised: "
        "RuntimeError: planted compiler failure); training goes on eagerly from that same step (train.compile=false "
        "skips compiling)"
    ]
    assert_same_as(tmp_path / "run", eager)


@pytest.mark.slow
def test_a_backward_that_fails_to_compile_after_the_forward_ran_changes_nothing(train, eager, tmp_path, monkeypatch):
    """Inductor compiles the backward lazily, in loss.backward(): the compiled forward has already updated the
    BatchNorm statistics and drawn mixup's random numbers; all of it is put back before the eager retry."""
    import torch._functorch.config
    import torch._inductor.compile_fx
    import torch._inductor.config

    torch._dynamo.reset()
    monkeypatch.setattr(torch._inductor.compile_fx, "compile_fx_backward", planted)
    # compile for real, not from a cache (torch's own config patching: it restores the values after)
    with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(enable_autograd_cache=False):
        result = train(*ARGS, "train.compile=default", f"output_dir={tmp_path / 'run'}")
    assert result.code == 0, result.err
    assert "warning: torch.compile failed at the first step (RuntimeError: planted compiler failure)" in result.err
    assert_same_as(tmp_path / "run", eager)


class Seen:
    """What CompileGuard.look reads from a run."""

    def __init__(self):
        self.state = type("State", (), {"step": 0})()


def test_compiles_that_keep_coming_after_the_warm_up_are_reported_once(capsys):
    """Events arrive through torch's own compile callbacks (as dynamo and the CUDA-graph trees raise them)."""
    from torch._dynamo.callback import CallbackTrigger, callback_handler

    guard, run = CompileGuard("reduce-overhead", is_main=True), Seen()

    def record():
        with callback_handler.install_callbacks(CallbackTrigger.CUDAGRAPH_RECORDING, "0/0"):
            pass

    try:
        assert guard.new_shape([64]) and not guard.new_shape([64])
        guard.fresh = True  # the first step of a shape: its compiles and recordings are expected
        record(), record(), record()
        guard.look(run)
        record()  # one late recording (a second shape's warm-up): no warning yet
        guard.look(run)
        assert capsys.readouterr().err == ""
        run.state.step = 150
        record()
        guard.look(run)
        record(), record()
        guard.look(run)
    finally:
        guard.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "warning: torch.compile compiled or recorded CUDA graphs 2 more times after its warm-up (by step 150): "
        "something changes every step (a shape, or a Python value the model reads), and each costs more than a "
        "step; TORCH_LOGS=recompiles,cudagraphs says what; train.compile=false trains eagerly"
    ]
