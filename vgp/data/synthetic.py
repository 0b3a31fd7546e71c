"""Data generated from the seed: no download, any size."""

from __future__ import annotations

import math

from vgp.data import DATASETS, Data, Shapes, standardise
from vgp.registry import LazyModule

torch = LazyModule("torch")  # imported on first use: vgp ls needs no torch

_SIZES = {"n_train": "[1, inf)", "n_test": "[1, inf)"}


def _teacher_bytes(dim, classes, hidden, n_train, n_test) -> int:
    """The teacher's weights and its hidden and output activations for every example, in float32."""
    n = n_train + n_test
    return 4 * (dim * hidden + hidden * classes + 2 * n * hidden + n * classes)


@DATASETS.register("teacher", "Gaussian inputs labelled by a fixed random teacher network (argmax of its outputs)",
                   ranges={"dim": "[1, inf)", "classes": "[2, inf)", "hidden": "[1, inf)", **_SIZES},
                   shapes=lambda a: Shapes((a["dim"],), a["classes"], a["n_train"], a["n_test"],
                                           build_bytes=_teacher_bytes(**a)))
def teacher(seed, dim: int = 64, classes: int = 10, hidden: int = 128, n_train: int = 4096, n_test: int = 1024):
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    x = torch.randn(n, dim, generator=g)
    w1 = torch.randn(dim, hidden, generator=g) / math.sqrt(dim)
    w2 = torch.randn(hidden, classes, generator=g) / math.sqrt(hidden)
    y = (torch.tanh(2 * x @ w1) @ w2).argmax(1)
    xtr, xte = standardise(x[:n_train], x[n_train:], per_feature=True)
    return Data(xtr, y[:n_train], xte, y[n_train:], (dim,), classes)


@DATASETS.register("spirals", "intertwined spirals in 2-D, one arm per class",
                   ranges={"classes": "[2, inf)", "turns": "[0, inf)", "noise": "[0, inf)", **_SIZES},
                   shapes=lambda a: Shapes((2,), a["classes"], a["n_train"], a["n_test"]))
def spirals(seed, classes: int = 2, turns: float = 1.5, noise: float = 0.1, n_train: int = 2000, n_test: int = 1000):
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    y = torch.randint(classes, (n,), generator=g)
    t = torch.rand(n, generator=g) * 0.95 + 0.05
    angle = 2 * math.pi * (turns * t + y / classes)
    x = torch.stack([t * torch.cos(angle), t * torch.sin(angle)], 1)
    x = x + noise * torch.randn(n, 2, generator=g) * t[:, None].clamp(min=0.2)
    xtr, xte = standardise(x[:n_train], x[n_train:], per_feature=True)
    return Data(xtr, y[:n_train], xte, y[n_train:], (2,), classes)
