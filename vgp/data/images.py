"""Real image data: scikit-learn's bundled digits (offline), MNIST, Fashion-MNIST and CIFAR-10.

MNIST-style sets load through torchvision (which reads the IDX files in ``<root>/<Name>/raw``).
CIFAR-10 is read from the pickled batches in ``<root>/cifar-10-batches-py`` by vgp itself:
torchvision checks each file's MD5, which no subset or test file can pass; torchvision is still
what downloads it when ``download: true``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from vgp.data import DATASETS, Data, standardise
from vgp.errors import DataError


def _split(x, y, n_test: int, seed: int):
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def _subset(x, y, n: int):
    return (x[:n], y[:n]) if n > 0 else (x, y)


@DATASETS.register("digits", "scikit-learn's 1,797 real 8x8 handwritten digits, shipped offline; shape (1, 8, 8)")
def digits(seed, n_test: int = 297):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.int64)
    xtr, ytr, xte, yte = _split(x, y, n_test, seed)
    xtr, xte = standardise(xtr, xte, per_feature=False)
    return Data(xtr, ytr, xte, yte, (1, 8, 8), 10)


def _torchvision_mnist(cls_name: str, root: str, download: bool, n_train: int, n_test: int):
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    raw = Path(root) / cls_name / "raw"
    try:
        train = cls(root, train=True, download=download)
        test = cls(root, train=False, download=download)
    except RuntimeError as e:
        if "not found" not in str(e).lower():
            raise
        raise DataError(
            f"{cls_name} not found under {raw}/: put train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            f"t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte there (unzipped), "
            f"or set data.download=true on a machine with internet access"
        ) from None
    except OSError as e:  # download failed: no network
        raise DataError(f"{cls_name}: download into {raw}/ failed ({e}); put the IDX files there by hand") from None
    xtr, ytr = _subset(train.data, train.targets, n_train)
    xte, yte = _subset(test.data, test.targets, n_test)
    xtr, xte = standardise(xtr.float().unsqueeze(1), xte.float().unsqueeze(1), per_feature=False)
    return Data(xtr, ytr.long(), xte, yte.long(), (1, 28, 28), 10)


@DATASETS.register("mnist", "MNIST through torchvision (n_train/n_test 0 = all); shape (1, 28, 28)")
def mnist(seed, root: str = "data", download: bool = False, n_train: int = 0, n_test: int = 0):
    return _torchvision_mnist("MNIST", root, download, n_train, n_test)


@DATASETS.register("fashion_mnist", "Fashion-MNIST through torchvision; shape (1, 28, 28)")
def fashion_mnist(seed, root: str = "data", download: bool = False, n_train: int = 0, n_test: int = 0):
    return _torchvision_mnist("FashionMNIST", root, download, n_train, n_test)


class _ArraysOnly(pickle.Unpickler):
    """CIFAR's batches are pickles of dicts, lists and numpy arrays: nothing else may be loaded,
    since unpickling can run code and a config may point ``root`` anywhere."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to unpickle {module}.{name}: a CIFAR-10 batch holds only numpy arrays")


def _cifar_batch(path: Path):
    with open(path, "rb") as f:
        d = _ArraysOnly(f, encoding="latin1").load()
    x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return torch.from_numpy(x.copy()), torch.tensor(d["labels"], dtype=torch.int64)


@DATASETS.register("cifar10", "CIFAR-10 (python batches, downloaded by torchvision if asked); shape (3, 32, 32)")
def cifar10(seed, root: str = "data", download: bool = False, n_train: int = 0, n_test: int = 0):
    folder = Path(root) / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    if not all((folder / n).exists() for n in names) and download:
        import torchvision

        try:
            torchvision.datasets.CIFAR10(root, train=True, download=True)
        except OSError as e:
            raise DataError(f"cifar10: download into {root}/ failed ({e}); put cifar-10-batches-py there by hand") from None
    missing = [n for n in names if not (folder / n).exists()]
    if missing:
        raise DataError(
            f"cifar10 not found: {folder}/ lacks {', '.join(missing)}; unpack cifar-10-python.tar.gz into {root}/ "
            f"or set data.download=true on a machine with internet access"
        )
    parts = [_cifar_batch(folder / n) for n in names[:5]]
    xtr, ytr = _subset(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), n_train)
    xte, yte = _subset(*_cifar_batch(folder / "test_batch"), n_test)
    xtr, xte = standardise(xtr.float(), xte.float(), per_feature=False, channel_dim=1)
    return Data(xtr, ytr, xte, yte, (3, 32, 32), 10)
