"""Sequence tasks for recurrent nets; inputs are (N, T, F).

``adding`` and ``copy`` are generated from the seed exactly as the literature defines them
(raw inputs, not standardised: the markers and one-hot symbols are the task). Every task
reports a baseline in summary.csv (``task_metric``, ``task_baseline``): the loss of the best
strategy that remembers nothing, which a model must beat to show it learnt across time.
"""

from __future__ import annotations

import math

from vgp.data import DATASETS, Data, Shapes
from vgp.data.images import _FILE_SET_RANGES, DIGITS, _mnist_sizes, _torchvision_mnist, digits
from vgp.registry import LazyModule

torch = LazyModule("torch")  # imported on first use: vgp ls needs no torch

_SIZES = {"n_train": "[1, inf)", "n_test": "[1, inf)"}


@DATASETS.register("adding", "Hochreiter & Schmidhuber's adding problem: sum the two marked values of a sequence",
                   ranges={"seq_len": "[2, inf)", **_SIZES},
                   shapes=lambda a: Shapes((a["seq_len"], 2), 1, a["n_train"], a["n_test"], "regression", (1,)))
def adding(seed, seq_len: int = 100, n_train: int = 10000, n_test: int = 1000):
    """x[:, t] = (value ~ U(0, 1), marker); one marker in each half; target the marked sum.

    Always answering 1 has mean squared error Var(a + b) = 1/6: the baseline.
    """
    g = torch.Generator().manual_seed(seed)
    n, half = n_train + n_test, max(seq_len // 2, 1)
    values = torch.rand(n, seq_len, generator=g)
    first = torch.randint(0, half, (n,), generator=g)
    second = torch.randint(half, seq_len, (n,), generator=g) if seq_len > 1 else first
    markers = torch.zeros(n, seq_len)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = torch.stack([values, markers], 2)  # (N, T, 2)
    y = (values * markers).sum(1, keepdim=True)  # (N, 1)
    return Data(x[:n_train], y[:n_train], x[n_train:], y[n_train:], (seq_len, 2), 1, "regression",
                {"task_metric": "mse", "task_baseline": 1 / 6})


@DATASETS.register("copy", "the copy-memory task: repeat `length` symbols after a delay of `seq_len` blanks",
                   ranges={"seq_len": "[1, inf)", "length": "[1, inf)", "symbols": "[1, inf)", **_SIZES},
                   shapes=lambda a: Shapes((a["seq_len"] + 2 * a["length"], a["symbols"] + 2), a["symbols"] + 1,
                                           a["n_train"], a["n_test"], "classification",
                                           (a["seq_len"] + 2 * a["length"],)))
def copy(seed, seq_len: int = 100, length: int = 10, symbols: int = 8, n_train: int = 10000, n_test: int = 1000):
    """Arjovsky et al. 2016: ``length`` symbols from 1..symbols, seq_len - 1 blanks (0), a delimiter
    (symbols + 1), ``length`` blanks; the targets are blanks, then the symbols. Inputs one-hot.

    Baseline: blanks, then guessing: cross-entropy length * ln(symbols) / (seq_len + 2 length).
    """
    g = torch.Generator().manual_seed(seed)
    n, total = n_train + n_test, seq_len + 2 * length
    data = torch.randint(1, symbols + 1, (n, length), generator=g)
    tokens = torch.zeros(n, total, dtype=torch.long)
    tokens[:, :length] = data
    tokens[:, length + seq_len - 1] = symbols + 1
    y = torch.zeros(n, total, dtype=torch.long)
    y[:, -length:] = data
    x = torch.nn.functional.one_hot(tokens, symbols + 2).float()  # (N, T, symbols + 2)
    baseline = length * math.log(symbols) / total
    return Data(x[:n_train], y[:n_train], x[n_train:], y[n_train:], (total, symbols + 2), symbols + 1,
                "classification", {"task_metric": "cross_entropy", "task_baseline": baseline})


def _seq_shape(side: int, order: str) -> tuple:
    """(T, F) of square side x side images read pixel by pixel or row by row."""
    return (side * side, 1) if order == "pixel" else (side, side)


def _as_sequence(d: Data, order: str, permute: bool) -> Data:
    """Images (N, 1, H, W) read pixel by pixel (T = H W, F = 1) or row by row (T = H, F = W)."""
    n_pix = d.x_train[0].numel()
    perm = torch.randperm(n_pix, generator=torch.Generator().manual_seed(0))  # one fixed permutation
    for name in ("x_train", "x_test"):
        x = getattr(d, name).flatten(1)
        if permute:
            x = x[:, perm]
        h, w = d.shape[-2:]
        setattr(d, name, x.reshape(len(x), n_pix, 1) if order == "pixel" else x.reshape(len(x), h, w))
    d.shape = tuple(d.x_train.shape[1:])
    counts = torch.bincount(d.y_train, minlength=d.num_outputs).float()
    p = counts[counts > 0] / counts.sum()
    d.info = {"task_metric": "cross_entropy", "task_baseline": float(-(p * p.log()).sum())}  # label entropy
    return d


@DATASETS.register("seq_digits", "scikit-learn's digits as sequences: 64 pixels or 8 rows, optionally permuted",
                   choices={"order": ["pixel", "row"]}, ranges={"n_test": f"[1, {DIGITS - 1}]"},
                   shapes=lambda a: Shapes(_seq_shape(8, a["order"]), 10, DIGITS - a["n_test"], a["n_test"]))
def seq_digits(seed, order: str = "pixel", permute: bool = False, n_test: int = 297):
    return _as_sequence(digits(seed, n_test), order, permute)


@DATASETS.register("seq_mnist", "MNIST as sequences: 784 pixels (sequential/permuted MNIST) or 28 rows",
                   choices={"order": ["pixel", "row"]}, ranges=_FILE_SET_RANGES,
                   shapes=lambda a: Shapes(_seq_shape(28, a["order"]), 10,
                                           *_mnist_sizes("MNIST", a["root"], a["download"], a["n_train"], a["n_test"])))
def seq_mnist(seed, order: str = "pixel", permute: bool = False, root: str = "data", download: bool = False,
              n_train: int = 0, n_test: int = 0):
    return _as_sequence(_torchvision_mnist("MNIST", root, download, n_train, n_test), order, permute)
