"""Data sets, chosen by short name. Every builder takes the seed and returns a :class:`Data`
held in memory as tensors (the harness samples batches by index, which is fast and exact).

Each is registered with the valid ranges of its arguments and a ``shapes`` function that says,
from the arguments alone, what it will give (:class:`Shapes`): input shape, outputs, set sizes.
``vgp validate`` checks a model and a batch against that without generating or loading the data
(file-based sets only read their files' headers, or the small CIFAR-10 batches)."""

from __future__ import annotations

import warnings

from dataclasses import dataclass, field

from vgp.registry import LazyModule, Registry

torch = LazyModule("torch")  # imported on first use: vgp ls needs no torch

DATASETS = Registry("dataset")


@dataclass
class Data:
    x_train: torch.Tensor  # (N, *shape) float32, standardised
    y_train: torch.Tensor  # (N,) int64 class labels, or (N, out) float32 targets
    x_test: torch.Tensor
    y_test: torch.Tensor
    shape: tuple  # one example's input shape: (64,) for vectors, (C, H, W) for images
    num_outputs: int  # classes, or regression outputs
    task: str = "classification"  # or "regression"
    info: dict = field(default_factory=dict)  # extra facts for summary.csv (e.g. a baseline)
    name: str = ""  # the registered name, for messages
    def to(self, device) -> "Data":
        for name in ("x_train", "y_train", "x_test", "y_test"):
            setattr(self, name, getattr(self, name).to(device))
        return self


@dataclass(frozen=True)
class Shapes:
    """What a data set gives, known from its arguments without building it."""

    shape: tuple  # one example's input: (64,) for vectors, (C, H, W) for images, (T, F) for sequences
    num_outputs: int  # classes, or regression outputs
    n_train: int
    n_test: int
    task: str = "classification"  # or "regression"
    target: tuple = ()  # one example's target: () a class, (T,) a class per step, (out,) regression values
    build_bytes: int = 0  # memory the builder needs for a while besides the tensors (e.g. a teacher network)


def shapes(spec: dict) -> Shapes:
    """The :class:`Shapes` of a resolved spec ``{name: ..., **args}`` (may raise DataError: missing files)."""
    return DATASETS[spec["name"]].meta["shapes"]({k: v for k, v in spec.items() if k != "name"})


def standardise(train: torch.Tensor, test: torch.Tensor, per_feature: bool, channel_dim: int | None = None):
    """Zero mean, unit variance with the training set's statistics.

    Vectors: per feature. Images: one mean/std per channel (``channel_dim``), or a single one,
    since per-pixel statistics blow up constant border pixels.
    """
    with warnings.catch_warnings():  # one training example: its std is NaN, replaced by 1 below
        warnings.simplefilter("ignore", UserWarning)
        if per_feature:
            mean, std = train.mean(0, keepdim=True), train.std(0, keepdim=True)
        elif channel_dim is not None:
            dims = [d for d in range(train.dim()) if d != channel_dim]
            mean, std = train.mean(dims, keepdim=True), train.std(dims, keepdim=True)
        else:
            mean, std = train.mean(), train.std()
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant (or NaN) features are only centred
    return (train - mean) / std, (test - mean) / std


def load(spec: dict, seed: int) -> Data:
    """Build the data set of a resolved spec ``{name: ..., **args}``."""
    data = DATASETS.build(spec, seed)
    data.name = spec["name"]
    return data


from vgp.data import images, sequence, synthetic  # noqa: E402,F401  (registers the data sets)
