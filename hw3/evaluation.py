"""One evaluation for everything: validation after each epoch, the final test, and `python -m hw3.evaluate`.

A split is sharded across processes without padding (process r takes images r, r + W, ...), every process sums
its loss, top-1 and top-5 hits (and, when asked, the confusion matrix) on the device, and one reduce adds them
up: the counts are exact, whatever the number of processes.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def evaluate(
    net: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    accelerator=None,
    confusion_classes: Optional[int] = None,
) -> dict:
    """{"loss", "acc" (top-1), "top5_acc", "count"} of `net` on `batches` (this process's shard), summed over all
    processes of `accelerator`; with `confusion_classes`, also "confusion" (true x predicted counts, on the CPU)."""
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, top-1 hits, top-5 hits
    n = confusion_classes or 0
    confusion = torch.zeros(n * n, dtype=torch.int64, device=device) if n else None
    count = 0
    for x, y in batches:
        logits = net(x).float()
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
