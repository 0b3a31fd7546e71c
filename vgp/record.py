"""The gradient recorder: per-layer gradient norms and activation statistics, kept on the device.

Life of a recorded step::

    with GradientRecorder(model.tracked(), act) as rec:   # removes every hook on exit
        rec.start()                  # attach forward hooks for this step only
        loss = loss_fn(model(x), y)
        loss.backward()              # tensor hooks keep references to dLoss/dz_l (no compute)
        rec.after_backward()         # norms of grads (pre-clip), activation stats, weight copy
        ...clip, optimizer.step()...
        values = rec.after_step()    # (len(KINDS), L) tensor on the device: update ratios added

Nothing is computed in the hooks themselves and nothing is hooked on steps that are not
recorded, so those run at the speed of a bare loop. Norms of many tensors are taken with one
``torch._foreach_norm`` call; activation statistics of equally shaped layers in one stacked op.
The caller converts the result to Python once per recorded step (one host synchronisation).
"""

from __future__ import annotations

import math

import torch

from vgp.activations import Activation
from vgp.models import Tracked

KINDS = ("weight_grad", "bias_grad", "output_grad", "weight", "update_ratio",
         "act_mean", "act_std", "saturation", "dead")
ACT_KINDS = ("act_mean", "act_std", "saturation", "dead")
SATURATION = 0.05  # a unit is saturated where |phi'(x)| < 5% of max |phi'|


def _norms(tensors: list) -> list[torch.Tensor]:
    """Frobenius norms, as 0-d tensors; one fused call for all of them."""
    return list(torch._foreach_norm(tensors)) if tensors else []


class GradientRecorder:
    def __init__(self, tracked: list[Tracked], activation: Activation):
        self.tracked = tracked
        self.names = [t.name for t in tracked]
        self.activation = activation
        self.weights = [t.layer.weight for t in tracked]
        self.has_bias = [t.layer.bias is not None for t in tracked]
        self.biases = [t.layer.bias for t in tracked if t.layer.bias is not None]
        self.has_act = [t.act is not None for t in tracked]
        self._prev = [torch.empty_like(w) for w in self.weights]  # weights before the step
        self._hooks: list = []
        self._out_grads: list = []
        self._act_in: list = []
        self._act_out: list = []
        self._partial: dict | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._detach()
        return False

    def _detach(self):
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def applicable(self) -> list[tuple[str, int]]:
        """The (kind, layer index) pairs that exist: no bias kinds without a bias, no act kinds
        for the output layer."""
        pairs = []
        for i in range(len(self.tracked)):
            for k in KINDS:
                if k == "bias_grad" and not self.has_bias[i]:
                    continue
                if k in ACT_KINDS and not self.has_act[i]:
                    continue
                pairs.append((k, i))  # layer by layer, kinds in KINDS order
        return pairs

    # -- a recorded step -------------------------------------------------------------------
    def start(self) -> None:
        """Hook the forward pass of this step: outputs of each layer, inputs/outputs of each act."""
        n = len(self.tracked)
        self._out_grads = [None] * n
        self._act_in = [None] * n
        self._act_out = [None] * n
        for i, t in enumerate(self.tracked):
            self._hooks.append(t.layer.register_forward_hook(self._layer_hook(i)))
            if t.act is not None:
                self._hooks.append(t.act.register_forward_hook(self._act_hook(i)))

    def _layer_hook(self, i):
        def hook(module, inputs, output):
            if output.requires_grad:
                output.register_hook(lambda g: self._out_grads.__setitem__(i, g))

        return hook

    def _act_hook(self, i):
        def hook(module, inputs, output):
            self._act_in[i] = inputs[0].detach()
            self._act_out[i] = output.detach()

        return hook

    def after_backward(self) -> None:
        """Norms of dLoss/dW, dLoss/db, dLoss/dz and of W (before clipping and the step)."""
        self._detach()
        dev = self.weights[0].device
        zero = torch.zeros((), device=dev)
        nan = torch.full((), math.nan, device=dev)
        wg = _norms([w.grad if w.grad is not None else torch.zeros_like(w) for w in self.weights])
        bg_iter = iter(_norms([b.grad if b.grad is not None else torch.zeros_like(b) for b in self.biases]))
        bg = [next(bg_iter) if has else nan for has in self.has_bias]
        present = [g for g in self._out_grads if g is not None]
        og_iter = iter(_norms(present))
        og = [next(og_iter) if g is not None else zero for g in self._out_grads]
        w = _norms(self.weights)
        torch._foreach_copy_(self._prev, [p.detach() for p in self.weights])
        self._partial = {"weight_grad": wg, "bias_grad": bg, "output_grad": og, "weight": w}
        self._partial.update(self._act_stats())
        self._out_grads = [None] * len(self.tracked)
        self._act_in = [None] * len(self.tracked)
        self._act_out = [None] * len(self.tracked)

    def after_step(self) -> torch.Tensor:
        """The step's values as a (len(KINDS), L) tensor on the device (NaN where not applicable)."""
        delta = torch._foreach_sub(self._prev, [p.detach() for p in self.weights])  # W_old - W_new
        moved = _norms(delta)
        w = self._partial["weight"]
        self._partial["update_ratio"] = [m / n for m, n in zip(moved, w)]
        rows = [torch.stack(self._partial[k]) for k in KINDS]
        self._partial = None
        return torch.stack(rows)

    def _act_stats(self) -> dict[str, list[torch.Tensor]]:
        """Mean and std of each activation output, saturated and dead fractions.

        Layers whose activations have the same shape are stacked and reduced together.
        ``dead``: fraction of units (features; for conv maps, channel-positions) that are zero
        for every example of the batch. ``saturation``: fraction of (example, unit) entries with
        |phi'(pre-activation)| below 5% of its maximum.
        """
        n = len(self.tracked)
        dev = self.weights[0].device
        nan = torch.full((), math.nan, device=dev)
        out = {k: [nan] * n for k in ACT_KINDS}
        groups: dict[tuple, list[int]] = {}
        for i in range(n):
            if self._act_out[i] is not None:
                groups.setdefault(tuple(self._act_out[i].shape), []).append(i)
        for shape, idx in groups.items():
            b = shape[0]
            h = torch.stack([self._act_out[i] for i in idx]).reshape(len(idx), b, -1)  # (G, B, U)
            z = torch.stack([self._act_in[i] for i in idx]).reshape(len(idx), b, -1)
            count = h.shape[1] * h.shape[2]
            s1 = h.sum((1, 2))
            s2 = (h * h).sum((1, 2))
            mean = s1 / count
            std = (s2 / count - mean * mean).clamp(min=0).sqrt()
            sat = (self.activation.dphi(z).abs() < SATURATION * self.activation.dphi_max).sum((1, 2)) / count
            dead = (~(h != 0).any(1)).sum(1) / h.shape[2]
            for j, i in enumerate(idx):
                out["act_mean"][i] = mean[j]
                out["act_std"][i] = std[j]
                out["saturation"][i] = sat[j]
                out["dead"][i] = dead[j]
        return out
