"""Learning-rate schedule and bias-corrected EMA of the weights.

* `lr_at_update(u, ...)`: the learning rate of the u-th optimiser iteration (u = 1, 2, ...): linear
  warm-up from lr/warmup_steps to lr over `warmup_steps` iterations (the VDVAE recipe warms up over
  100 steps: Child 2021's reference implementation), then constant, cosine or linear decay to `lr *
  final_fraction` at `total_steps`. Iterations count whether or not the update was skipped, as the
  reference's scheduler does.
* `EMA`: exponential moving average of the parameters, updated on applied updates only. With bias
  correction (default) the average starts at zero and is divided by 1 - rate^n, n = applied updates,
  exactly as Adam corrects its moments (Kingma & Ba 2015, Section 3): the weights of a short run are
  then an average of that run's recent weights rather than being dominated by the initial ones (the
  CPU-scale prototype in docs/benchmarks.md: EMA 0.999 over 1,600 steps scored ~1.5 bits/dim worse
  than the raw weights without it). Without bias correction the average starts at the initial
  weights (the reference implementation's behaviour).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_at_update(update: int, *, base_lr: float, warmup_steps: int, schedule: str = "constant",
                 total_steps: int | None = None, final_fraction: float = 0.0) -> float:
    """Learning rate of the `update`-th iteration (1-based). Pure function of its arguments.

    Warm-up: lr · min(1, u / warmup_steps), so the first iteration already moves the weights.
    Decay (after warm-up): fraction t = (u - warmup) / (total - warmup) in [0, 1];
    cosine: f + (1 - f) · ½(1 + cos πt); linear: 1 - (1 - f) · t; f = final_fraction.
    """
    assert update >= 1, update
    assert schedule in LR_SCHEDULES, schedule
    if warmup_steps > 0 and update < warmup_steps:
        return base_lr * update / warmup_steps
    if schedule == "constant":
        return base_lr
    assert total_steps is not None, "a decaying schedule needs total_steps"
    span = total_steps - warmup_steps
    progress = 1.0 if span <= 0 else min(1.0, max(0.0, (update - warmup_steps) / span))
    if schedule == "cosine":
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        factor = final_fraction + (1.0 - final_fraction) * cosine
    else:
        factor = 1.0 - (1.0 - final_fraction) * progress
    return base_lr * factor


class EMA:
    """Shadow copy of a module's parameters: s ← rate·s + (1 - rate)·θ on each applied update.

    `module()` returns a module (kept and refreshed in place, a deep copy of the model) holding
    the bias-corrected average s / (1 - rate^n); buffers are copied from the live model. Before
    the first applied update it holds the live weights.
    """

    def __init__(self, model: nn.Module, rate: float, bias_correction: bool = True):
        assert 0.0 <= rate < 1.0, rate
        self.rate = float(rate)
        self.bias_correction = bool(bias_correction)
        self.updates = 0
        self._model = model
        # Low-precision parameters are averaged in float32; float32/float64 ones in their own dtype.
        params = [p.detach() for p in model.parameters()]
        dtypes = [torch.promote_types(p.dtype, torch.float32) for p in params]
        if self.bias_correction:
            self.shadow = [torch.zeros_like(p, dtype=d) for p, d in zip(params, dtypes)]
        else:
            self.shadow = [p.clone().to(d) for p, d in zip(params, dtypes)]
        self._module: nn.Module | None = None

    @torch.no_grad()
    def update(self) -> None:
        """One applied optimiser update: fold the live parameters into the average."""
        for shadow, param in zip(self.shadow, self._model.parameters()):
            shadow.mul_(self.rate).add_(param.detach().to(shadow.dtype), alpha=1.0 - self.rate)
        self.updates += 1

    def correction(self) -> float:
        """The divisor 1 - rate^n (1 when bias correction is off)."""
        if not self.bias_correction:
            return 1.0
        return 1.0 - self.rate ** self.updates

    @torch.no_grad()
    def averaged_parameters(self) -> list[torch.Tensor]:
        """The bias-corrected averages, one per parameter, in the live parameters' dtypes."""
        live = list(self._model.parameters())
        if self.bias_correction and self.updates == 0:
            return [p.detach().clone() for p in live]
        divisor = self.correction()
        return [(s / divisor).to(p.dtype) for s, p in zip(self.shadow, live)]

    @torch.no_grad()
    def module(self) -> nn.Module:
        """A module with the averaged weights (refreshed on every call; eval mode)."""
        if self._module is None:
            self._module = copy.deepcopy(self._model)
            for p in self._module.parameters():
                p.requires_grad_(False)
        for target, value in zip(self._module.parameters(), self.averaged_parameters()):
            target.copy_(value)
        for target, value in zip(self._module.buffers(), self._model.buffers()):
            target.copy_(value)
        return self._module.eval()

    def state_dict(self) -> dict:
        return {"rate": self.rate, "bias_correction": self.bias_correction,
                "updates": self.updates, "shadow": [s.clone() for s in self.shadow]}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        assert len(state["shadow"]) == len(self.shadow), "EMA state does not match the model"
        self.rate = float(state["rate"])
        self.bias_correction = bool(state["bias_correction"])
        self.updates = int(state["updates"])
        for shadow, value in zip(self.shadow, state["shadow"]):
            shadow.copy_(value)
