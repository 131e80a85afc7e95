"""The end of a run: the test split on the best weights, and summary.json's numbers."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from hw3.dist.faults import crash_point
from hw3.engine.build import Run
from hw3.engine.evaluation import evaluate_in_precision
from hw3.engine.tracking import device_name
from hw3.runs.layout import BEST
from hw3.storage.manifest import check_weights


def test_best(run: Run) -> dict:
    """Test-split loss and accuracy of the best weights (every process loads them), once, at the end, under the
    mixed precision they were validated in."""
    if run.data.src.test is None:
        return {}
    best = run.run_dir / BEST / "model.safetensors"
    crash_point("test")
    run.accelerator.wait_for_everyone()
    if best.is_file():
        check_weights(best, best.with_name("model.json"))
        run.net.load_state_dict(load_file(str(best)))
    result = evaluate_in_precision(run, run.net, "test")
    return dict(
        test_acc=result["acc"], test_top5_acc=result["top5_acc"], test_loss=result["loss"], test_images=result["count"]
    )


def processes_in_sync(accelerator, net: torch.nn.Module) -> bool:
    """Do all processes hold bit-identical parameters? (DDP should guarantee it; a fingerprint per process.)"""
    params = [p.detach().double() for p in net.parameters()]
    fingerprint = torch.stack(
        [sum(p.sum() for p in params), sum((i + 1) * p.square().sum() for i, p in enumerate(params))]
    )
    everyone = accelerator.gather(fingerprint[None])
    same = bool((everyone == everyone[0]).all())
    if not same:
        accelerator.print("warning: the processes ended with different weights (DDP did not keep them in sync)")
    return same


def peak_memory_gib(device: torch.device) -> float:
    """Peak GPU memory allocated by torch, or the process's peak resident memory on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def summary_of(run: Run, test: dict) -> dict:
    state, cfg, best = run.state, run.cfg, run.best
    return dict(
        best_val_acc=best.metrics["acc"] if best.metrics else None,
        best_val_loss=best.metrics["loss"] if best.metrics else None,
        best_epoch=best.epoch,
        best_source=best.source,
        monitor=cfg.early_stop.monitor,
        epochs=state.epochs,
        epochs_completed=len(state.history),
        stopped_early=state.stopped == "early_stop",
        stopped_reason=state.stopped,
        stopped_epoch=len(state.history) - 1 if state.stopped else None,
        **test,
        wall_time_s=state.wall_time_s,
        passes=state.image_passes / run.data.num_train,  # forward/backward passes over the training split
        train_time_s=state.train_time_s,
        optimizer_steps=state.step,
        skipped_steps=state.skipped_steps,
        processes=run.accelerator.num_processes,
        device=" + ".join(dict.fromkeys(launch["device"] for launch in state.launches)) or device_name(run.accelerator),
        mixed_precision=run.accelerator.mixed_precision,
        launches=state.launches,
        peak_memory_gib=peak_memory_gib(run.accelerator.device),
        model=cfg.model.name,
        dataset=cfg.data.name,
        pretrained=bool(cfg.model.pretrained or cfg.model.pretrained_file),
        image_size=run.card["image_size"],
        optimizer=cfg.optim.name if cfg.optim.name != "sam" else f"sam({cfg.optim.base})",
        tta=cfg.eval.tta,  # the test-time augmentation of the validation and test numbers above
        label_noise=cfg.data.label_noise,
        noisy_labels=run.data.src.noisy_labels,
    )
