"""One evaluation for everything: validation after each epoch, the final test, and `python -m hw3.evaluate`.

A split is sharded across processes without padding (process r takes images r, r + W, ...), every process sums
its loss, top-1 and top-5 hits (and, when asked, the confusion matrix) on the device, and one reduce adds them
up: the counts are exact, whatever the number of processes. During training every network evaluated (the model
and its EMA) runs under the run's mixed precision, so the two are compared like for like (timm does the same).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from hw3.engine.build import Run


def shifted(x: torch.Tensor, pixels: int) -> torch.Tensor:
    """The batch moved `pixels` right and down, edges repeated (a translation, not a wrap-around)."""
    return F.pad(x, (pixels, 0, pixels, 0), mode="replicate")[..., : x.shape[-2], : x.shape[-1]]


def logits_with_tta(net: nn.Module, x: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """The logits of `x`, averaged over the views of test-time augmentation (eval.tta): none; flip (the image and
    its mirror); flip_shift (those two and both moved by 1/16 of the side, at least 1 px: four views)."""
    if tta == "none":
        return net(x)
    views = [x, x.flip(-1)]
    if tta == "flip_shift":
        moved = shifted(x, max(1, x.shape[-1] // 16))
        views += [moved, moved.flip(-1)]
    return torch.stack([net(v).float() for v in views]).mean(dim=0)


@torch.no_grad()
def evaluate(
    net: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    accelerator=None,
    confusion_classes: Optional[int] = None,
    tta: str = "none",
) -> dict:
    """{"loss", "acc" (top-1), "top5_acc", "count"} of `net` on `batches` (this process's shard), summed over all
    processes of `accelerator`, the logits averaged over `tta`'s views; with `confusion_classes`, also
    "confusion" (true x predicted counts, on the CPU)."""
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, top-1 hits, top-5 hits
    n = confusion_classes or 0
    confusion = torch.zeros(n * n, dtype=torch.int64, device=device) if n else None
    count = 0
    for x, y in batches:
        logits = logits_with_tta(net, x, tta).float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == y[:, None]
        loss = F.cross_entropy(logits, y, reduction="sum")
        sums += torch.stack([loss.double(), hits[:, 0].sum().double(), hits.any(dim=1).sum().double()])
        if confusion is not None:
            confusion += torch.bincount(y * n + top[:, 0], minlength=n * n)
        count += len(y)
    net.train(was_training)
    totals = torch.cat([sums, torch.tensor([float(count)], dtype=torch.float64, device=device)])
    if accelerator is not None and accelerator.num_processes > 1:
        totals = accelerator.reduce(totals, "sum")
        confusion = accelerator.reduce(confusion, "sum") if confusion is not None else None
    loss, top1, top5, count = totals.tolist()
    result = dict(loss=loss / max(count, 1), acc=top1 / max(count, 1), top5_acc=top5 / max(count, 1), count=int(count))
    if confusion is not None:
        result["confusion"] = confusion.view(n, n).cpu()
    return result


def evaluate_on_val(run: "Run") -> list[tuple[str, dict, torch.nn.Module]]:
    """(source, metrics, module) for the model and, with EMA, its average, on the validation split, each under
    the run's autocast (accelerate wraps the prepared model's forward in it, but not the EMA's copy)."""
    return [(name, evaluate_in_precision(run, module, "val"), module) for name, module in networks(run)]


def networks(run: "Run") -> list[tuple[str, torch.nn.Module]]:
    return [("model", run.net)] + ([("ema", run.ema.module)] if run.ema is not None else [])


def evaluate_in_precision(run: "Run", net: torch.nn.Module, split: str) -> dict:
    """`net` on `split` of the run's data, under the run's mixed precision, with its test-time augmentation."""
    sync_buffers(run.accelerator, net)
    batches = run.data.eval_batches(split, eval_batch_size(run.cfg.train))
    with run.accelerator.autocast():
        result = evaluate(net, batches, run.accelerator, tta=run.cfg.eval.tta)
    say_unreadable(run.data, split)  # left out of the result's count
    return result


def say_unreadable(data, split: str) -> int:
    """One warning per sample of `split` skipped as unreadable since the last call, by the process that met it;
    how many."""
    found = data.unreadable(split)
    for said in found:
        print(f"warning: skipping an unreadable sample: {said}", file=sys.stderr, flush=True)
    return len(found)


def eval_batch_size(cfg) -> int:
    """train.eval_batch_size, or twice the training batch (no activations are kept for a backward)."""
    return cfg.eval_batch_size or 2 * cfg.batch_size


def sync_buffers(accelerator, net: torch.nn.Module) -> None:
    """BatchNorm statistics differ slightly between processes after the last step; use the main process's."""
    if accelerator.num_processes > 1:
        for buf in net.buffers():
            torch.distributed.broadcast(buf, src=0)
