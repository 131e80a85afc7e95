"""The weight EMA (timm's ModelEmaV3), whose update a non-finite step switches off on the device."""

from __future__ import annotations

import torch
from timm.utils import ModelEmaV3
from torch import nn


class DeviceSkippingEma(ModelEmaV3):
    """timm's ModelEmaV3 whose update can be switched off by a device tensor (a skipped step moves nothing)."""

    @torch.no_grad()
    def update_unless(self, model: nn.Module, bad: torch.Tensor, step: int) -> None:
        weight = (1.0 - self.get_decay(step)) * (1.0 - bad)  # the share of the model taken in; 0 when skipped
        self.apply_update_(model, 1.0 - weight)

    def _foreach_lerp_(self, ema_values: list, model_values: list, weight) -> None:
        if torch.is_tensor(weight):  # one 0-d tensor per list entry: broadcast by the kernel, no host read
            torch._foreach_lerp_(ema_values, model_values, [weight] * len(ema_values))
        else:
            super()._foreach_lerp_(ema_values, model_values, weight)
