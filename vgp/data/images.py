"""Real image data: scikit-learn's bundled digits (offline), MNIST, Fashion-MNIST and CIFAR-10.

MNIST-style sets load through torchvision (which reads the IDX files in ``<root>/<Name>/raw``).
CIFAR-10 is read from the pickled batches in ``<root>/cifar-10-batches-py`` by vgp itself:
torchvision checks each file's MD5, which no subset or test file can pass; torchvision is still
what downloads it when ``download: true``.
"""

from __future__ import annotations

import functools
import pickle
import struct
from pathlib import Path

import numpy as np

from vgp.data import DATASETS, Data, Shapes, standardise
from vgp.errors import DataError, clipped
from vgp.registry import LazyModule

torch = LazyModule("torch")  # imported on first use: vgp ls needs no torch

DIGITS = 1797  # images in scikit-learn's digits
# the published sets' sizes, assumed for a set that is to be downloaded
SIZES = {"MNIST": (60000, 10000), "FashionMNIST": (60000, 10000), "cifar10": (50000, 10000)}
# n_train/n_test 0 means the whole set
_FILE_SET_RANGES = {"n_train": "[0, inf)", "n_test": "[0, inf)"}


def _split(x, y, n_test: int, seed: int):
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def _subset(x, y, n: int):
    return (x[:n], y[:n]) if n > 0 else (x, y)


@DATASETS.register("digits", "scikit-learn's 1,797 real 8x8 handwritten digits, shipped offline; shape (1, 8, 8)",
                   ranges={"n_test": f"[1, {DIGITS - 1}]"},
                   shapes=lambda a: Shapes((1, 8, 8), 10, DIGITS - a["n_test"], a["n_test"]))
def digits(seed, n_test: int = 297):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.int64)
    xtr, ytr, xte, yte = _split(x, y, n_test, seed)
    xtr, xte = standardise(xtr, xte, per_feature=False)
    return Data(xtr, ytr, xte, yte, (1, 8, 8), 10)


def _subset_size(n: int, available: int, key: str, where: str) -> int:
    """The examples a run uses: n (0: all), which must not be more than there are."""
    if n > available:
        raise DataError(f"data.{key}: {n} examples asked for, but {where} holds {available}; "
                        f"use at most {available} (0 = all)")
    return n or available


_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _mnist_missing(cls_name: str, raw: Path) -> DataError:
    return DataError(
        f"{cls_name} not found under {raw}/: put train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        f"t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte there (unzipped), "
        f"or set data.download=true on a machine with internet access"
    )


def _idx_count(path: Path, dims: tuple, classes: int | None = None) -> int:
    """Examples in an IDX file (the MNIST format), from its header; checks the header, the file's
    size and (for labels) that every label is a class. Raises DataError naming the file."""
    def bad(why):
        return DataError(f"{path}: not a valid IDX file ({why}); delete it and download or unzip it again")

    try:
        with open(path, "rb") as f:
            head = f.read(4 + 4 * (1 + len(dims)))
            if len(head) < 4 + 4 * (1 + len(dims)):
                raise bad("the header is cut short")
            zero, kind, ndim = struct.unpack(">HBB", head[:4])
            shape = struct.unpack(f">{ndim}I", head[4:4 + 4 * ndim]) if ndim == 1 + len(dims) else None
            if zero != 0 or kind != 0x08 or shape is None or tuple(shape[1:]) != dims:
                raise bad(f"expected unsigned bytes of shape (N, {', '.join(map(str, dims))})")
            n = shape[0]
            size = path.stat().st_size
            if size != len(head) + n * int(np.prod(dims)):
                raise bad(f"{size} bytes where its header promises {len(head) + n * int(np.prod(dims))}")
            if classes is not None and n and int(np.frombuffer(f.read(), dtype=np.uint8).max()) >= classes:
                raise bad(f"a label is not one of the {classes} classes")
            return n
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def _mnist_sizes(cls_name: str, root: str, download: bool, n_train: int, n_test: int) -> tuple[int, int]:
    """(n_train, n_test) a run will use, from the IDX files' headers (or, for a set still to be
    downloaded, its published size)."""
    raw = Path(root) / cls_name / "raw"
    files = [raw / f for pair in _IDX_FILES.values() for f in pair]
    if not all(f.is_file() for f in files):
        if not download:
            raise _mnist_missing(cls_name, raw)
        available = SIZES[cls_name]
    else:
        available = []
        for images, labels in _IDX_FILES.values():
            n = _idx_count(raw / images, (28, 28))
            if _idx_count(raw / labels, (), classes=10) != n:
                raise DataError(f"{raw / labels}: not as many labels as {raw / images} has images; "
                                f"delete both and download or unzip them again")
            available.append(n)
    return (_subset_size(n_train, available[0], "n_train", f"{raw}/"),
            _subset_size(n_test, available[1], "n_test", f"{raw}/"))


def _mnist_shapes(cls_name: str):
    return lambda a: Shapes((1, 28, 28), 10, *_mnist_sizes(cls_name, a["root"], a["download"], a["n_train"],
                                                          a["n_test"]))


def _torchvision_mnist(cls_name: str, root: str, download: bool, n_train: int, n_test: int):
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    raw = Path(root) / cls_name / "raw"
    try:
        train = cls(root, train=True, download=download)
        test = cls(root, train=False, download=download)
    except RuntimeError as e:
        if "not found" not in str(e).lower():
            raise DataError(f"{cls_name}: cannot read the files under {raw}/ ({clipped(e)}); "
                            f"delete them and download or unzip them again") from None
        raise _mnist_missing(cls_name, raw) from None
    except OSError as e:  # download failed: no network
        raise DataError(f"{cls_name}: download into {raw}/ failed ({e}); put the IDX files there by hand") from None
    except (ValueError, TypeError, IndexError, struct.error) as e:  # a corrupt file
        raise DataError(f"{cls_name}: cannot read the files under {raw}/ ({type(e).__name__}: "
                        f"{clipped(e)}); delete them and download or unzip them again") from None
    _subset_size(n_train, len(train.data), "n_train", f"{raw}/")
    _subset_size(n_test, len(test.data), "n_test", f"{raw}/")
    xtr, ytr = _subset(train.data, train.targets, n_train)
    xte, yte = _subset(test.data, test.targets, n_test)
    xtr, xte = standardise(xtr.float().unsqueeze(1), xte.float().unsqueeze(1), per_feature=False)
    return Data(xtr, ytr.long(), xte, yte.long(), (1, 28, 28), 10)


@DATASETS.register("mnist", "MNIST through torchvision (n_train/n_test 0 = all); shape (1, 28, 28)",
                   ranges=_FILE_SET_RANGES, shapes=_mnist_shapes("MNIST"))
def mnist(seed, root: str = "data", download: bool = False, n_train: int = 0, n_test: int = 0):
    return _torchvision_mnist("MNIST", root, download, n_train, n_test)


@DATASETS.register("fashion_mnist", "Fashion-MNIST through torchvision; shape (1, 28, 28)",
                   ranges=_FILE_SET_RANGES, shapes=_mnist_shapes("FashionMNIST"))
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
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) of one pickled batch; DataError naming the file
    when it is not one (cut short, another pickle, labels that are not classes)."""
    def bad(why):
        return DataError(f"{path}: not a CIFAR-10 batch ({why}); unpack cifar-10-python.tar.gz again")

    try:
        with open(path, "rb") as f:
            d = _ArraysOnly(f, encoding="latin1").load()
        x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d["labels"], dtype=np.int64).reshape(-1)
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except Exception as e:  # unpickling a damaged file raises almost anything
        raise bad(f"{type(e).__name__}: {clipped(e, 120)}") from None
    if len(y) != len(x):
        raise bad(f"{len(x)} images but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise bad("a label is not one of the 10 classes")
    return torch.from_numpy(x.copy()), torch.from_numpy(y)


_CIFAR_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


@functools.lru_cache(maxsize=64)
def _cifar_count(path: str, size: int, mtime_ns: int) -> int:
    """Images in one batch (read once per file version: validating a sweep reads each file once)."""
    return len(_cifar_batch(Path(path))[1])


def _cifar_shapes(a: dict) -> Shapes:
    folder = Path(a["root"]) / "cifar-10-batches-py"
    if not all((folder / n).is_file() for n in _CIFAR_NAMES):
        if not a["download"]:
            raise _cifar_missing(Path(a["root"]), folder)
        available = SIZES["cifar10"]
    else:
        counts = []
        for n in _CIFAR_NAMES:
            st = (folder / n).stat()
            counts.append(_cifar_count(str(folder / n), st.st_size, st.st_mtime_ns))
        available = (sum(counts[:5]), counts[5])
    return Shapes((3, 32, 32), 10, _subset_size(a["n_train"], available[0], "n_train", f"{folder}/"),
                  _subset_size(a["n_test"], available[1], "n_test", f"{folder}/"))


def _cifar_missing(root: Path, folder: Path) -> DataError:
    missing = [n for n in _CIFAR_NAMES if not (folder / n).is_file()]
    return DataError(
        f"cifar10 not found: {folder}/ lacks {', '.join(missing)}; unpack cifar-10-python.tar.gz into {root}/ "
        f"or set data.download=true on a machine with internet access"
    )


@DATASETS.register("cifar10", "CIFAR-10 (python batches, downloaded by torchvision if asked); shape (3, 32, 32)",
                   ranges=_FILE_SET_RANGES, shapes=_cifar_shapes)
def cifar10(seed, root: str = "data", download: bool = False, n_train: int = 0, n_test: int = 0):
    folder = Path(root) / "cifar-10-batches-py"
    names = _CIFAR_NAMES
    if not all((folder / n).exists() for n in names) and download:
        import torchvision

        try:
            torchvision.datasets.CIFAR10(root, train=True, download=True)
        except OSError as e:
            raise DataError(f"cifar10: download into {root}/ failed ({e}); put cifar-10-batches-py there by hand") from None
    if not all((folder / n).is_file() for n in names):
        raise _cifar_missing(Path(root), folder)
    parts = [_cifar_batch(folder / n) for n in names[:5]]
    xtr, ytr = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    xte, yte = _cifar_batch(folder / "test_batch")
    _subset_size(n_train, len(xtr), "n_train", f"{folder}/")
    _subset_size(n_test, len(xte), "n_test", f"{folder}/")
    xtr, ytr = _subset(xtr, ytr, n_train)
    xte, yte = _subset(xte, yte, n_test)
    xtr, xte = standardise(xtr.float(), xte.float(), per_feature=False, channel_dim=1)
    return Data(xtr, ytr, xte, yte, (3, 32, 32), 10)
