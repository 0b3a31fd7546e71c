"""Sequence tasks for recurrent nets and transformers; inputs are (N, T, F).

``adding`` and ``copy`` are generated from the seed exactly as the literature defines them
(raw inputs, not standardised: the markers and one-hot symbols are the task). Every task
reports a baseline in summary.csv (``task_metric``, ``task_baseline``): the loss of the best
strategy that remembers nothing, which a model must beat to show it learnt across time.
"""

from __future__ import annotations

import math

from vgp.data import DATASETS, Data, Shapes
from vgp.errors import DataError
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


MAX_CONTEXTS = 2 ** 22  # rows of a Markov language's table (vocab ** order)


def _markov_shapes(seq_len=32, vocab=16, order=2, branching=2, n_train=4000, n_test=500) -> Shapes:
    if vocab ** order > MAX_CONTEXTS:
        raise DataError(f"data.order: vocab ** order = {vocab}^{order} contexts, more than {MAX_CONTEXTS:,} (the "
                        f"language's table); use a smaller data.vocab or data.order")
    return Shapes((seq_len, vocab), vocab, n_train, n_test, "classification", (seq_len,),
                  build_bytes=8 * vocab ** order * (vocab + min(branching, vocab)))


@DATASETS.register("markov", "next-token prediction on a synthetic language: a random order-k Markov chain over "
                             "`vocab` symbols (one-hot inputs, a class per step)",
                   ranges={"seq_len": "[1, inf)", "vocab": "[2, inf)", "order": "[1, inf)", "branching": "[1, inf)",
                           **_SIZES},
                   shapes=lambda a: _markov_shapes(**a))
def markov(seed, seq_len: int = 32, vocab: int = 16, order: int = 2, branching: int = 2, n_train: int = 4000,
           n_test: int = 500):
    """A language generated from the seed, offline: each context of the last ``order`` symbols allows
    ``branching`` next symbols (drawn without repeats; all of them if branching >= vocab), equally
    likely; the first ``order`` symbols are uniform. x: one-hot symbols 1..T of a sequence of T + 1,
    y: symbols 2..T + 1 (a causal model predicts each from those before it).

    Baseline (remembers nothing): the entropy of the symbols' frequencies in the training targets.
    The best possible cross-entropy, ``task_best``, is known exactly: the first order - 1 targets are
    uniform (ln vocab), every later one has ``branching`` choices (ln branching)."""
    _markov_shapes(seq_len, vocab, order, branching, n_train, n_test)
    g = torch.Generator().manual_seed(seed)
    b = min(branching, vocab)
    n, contexts = n_train + n_test, vocab ** order
    table = torch.rand(contexts, vocab, generator=g).argsort(1)[:, :b]  # (V^k, b): the allowed next symbols
    tokens = torch.empty(n, seq_len + 1, dtype=torch.long)
    first = min(order, seq_len + 1)
    tokens[:, :first] = torch.randint(0, vocab, (n, first), generator=g)
    ctx = torch.zeros(n, dtype=torch.long)  # the last `order` symbols as a base-vocab number
    for t in range(first):
        ctx = ctx * vocab + tokens[:, t]
    choice = torch.randint(0, b, (n, seq_len + 1), generator=g)
    for t in range(first, seq_len + 1):
        tokens[:, t] = table[ctx, choice[:, t]]
        ctx = (ctx % vocab ** (order - 1)) * vocab + tokens[:, t]
    x = torch.nn.functional.one_hot(tokens[:, :-1], vocab).float()  # (N, T, vocab)
    y = tokens[:, 1:]  # (N, T)
    counts = torch.bincount(y[:n_train].flatten(), minlength=vocab).float()
    p = counts[counts > 0] / counts.sum()
    uniform = min(order - 1, seq_len)
    best = (uniform * math.log(vocab) + (seq_len - uniform) * math.log(b)) / seq_len
    return Data(x[:n_train], y[:n_train], x[n_train:], y[n_train:], (seq_len, vocab), vocab, "classification",
                {"task_metric": "cross_entropy", "task_baseline": float(-(p * p.log()).sum()), "task_best": best})


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
