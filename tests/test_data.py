"""Data sets: generated ones from the seed, the bundled digits, and the download sets' loading
code on small files that the tests write in each data set's own format."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from conftest import tiny
from vgp import config, data
from vgp.data import DATASETS
from vgp.errors import DataError
from vgp.train import run


def load(name, seed=0, **args):
    return data.load(DATASETS.resolve({"name": name, **args}, "data"), seed)


def test_teacher_is_seeded_standardised_and_uses_every_class():
    a, b, c = load("teacher", 0), load("teacher", 0), load("teacher", 1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_train, c.x_train)
    assert a.x_train.shape == (4096, 64) and a.x_test.shape == (1024, 64) and a.shape == (64,)
    assert a.x_train.mean(0).abs().max() < 1e-5 and (a.x_train.std(0) - 1).abs().max() < 1e-4
    counts = torch.bincount(a.y_train, minlength=10)
    assert (counts > 0).all() and counts.max() < 0.5 * len(a.y_train)


def test_spirals_arms():
    d = load("spirals", classes=3, n_train=300, n_test=30)
    assert d.x_train.shape == (300, 2) and set(d.y_train.tolist()) == {0, 1, 2} and d.num_outputs == 3


def test_digits_are_the_real_bundled_images():
    d = load("digits")
    assert len(d.x_train) + len(d.x_test) == 1797
    assert d.shape == (1, 8, 8) and d.x_train.shape[1:] == (1, 8, 8) and d.num_outputs == 10
    from sklearn.datasets import load_digits

    raw = torch.tensor(load_digits().images, dtype=torch.float32).reshape(1797, -1)
    perm = torch.randperm(1797, generator=torch.Generator().manual_seed(0))  # the seeded split
    raw = torch.cat([raw[perm[297:]], raw[perm[:297]]])
    got = torch.cat([d.x_train, d.x_test]).reshape(1797, -1)
    # one affine map (global standardisation) of the same images
    scale = (got[:, 1:] - got[:, :1]) / (raw[:, 1:] - raw[:, :1]).where(raw[:, 1:] != raw[:, :1], torch.nan)
    s = scale[~scale.isnan()]
    assert (s - s[0]).abs().max() < 1e-4 and s[0] > 0
    assert sorted(torch.cat([d.y_train, d.y_test]).tolist()) == sorted(load_digits().target.tolist())


def _idx(path, array: np.ndarray, gz=False):
    """Write an IDX file (the MNIST format): magic, dims, big-endian, then the bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_style_sets_load_from_idx_files(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    xtr, ytr = rng.integers(0, 256, (50, 28, 28)), rng.integers(0, 10, 50)
    xte, yte = rng.integers(0, 256, (20, 28, 28)), rng.integers(0, 10, 20)
    _idx(raw / "train-images-idx3-ubyte", xtr)
    _idx(raw / "train-labels-idx1-ubyte", ytr)
    _idx(raw / "t10k-images-idx3-ubyte", xte)
    _idx(raw / "t10k-labels-idx1-ubyte", yte)
    d = load(name, root=str(tmp_path), n_train=40)
    assert d.x_train.shape == (40, 1, 28, 28) and d.x_test.shape == (20, 1, 28, 28)
    assert d.y_train.tolist() == ytr[:40].tolist() and d.y_test.tolist() == yte.tolist()
    # standardised with one mean and std: the order of pixel values is kept
    flat = torch.tensor(xtr[:40].reshape(-1), dtype=torch.float32)
    assert torch.equal(torch.argsort(d.x_train.reshape(-1), stable=True), torch.argsort(flat, stable=True))


def test_missing_mnist_says_where_to_put_the_files(tmp_path):
    with pytest.raises(DataError) as e:
        load("mnist", root=str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path / "MNIST" / "raw") in msg and "train-images-idx3-ubyte" in msg and "download" in msg


def _cifar_batch(path, n, rng):
    x = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
    y = rng.integers(0, 10, n).tolist()
    with open(path, "wb") as f:
        pickle.dump({"data": x, "labels": y, "batch_label": path.name}, f)
    return x, y


def test_cifar10_loads_from_python_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    parts = [_cifar_batch(folder / f"data_batch_{i}", 6, rng) for i in range(1, 6)]
    xte, yte = _cifar_batch(folder / "test_batch", 4, rng)
    d = load("cifar10", root=str(tmp_path))
    assert d.x_train.shape == (30, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32) and d.shape == (3, 32, 32)
    assert d.y_train.tolist() == sum((p[1] for p in parts), []) and d.y_test.tolist() == yte
    per_channel = d.x_train.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(per_channel.std(1), torch.ones(3), atol=1e-4)


def test_missing_cifar10_names_the_files(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py.*data_batch_1"):
        load("cifar10", root=str(tmp_path))


@pytest.mark.parametrize("name", ["digits", "spirals"])
def test_runs_on_each_offline_set(tmp_path, name):
    raw = tiny(data={"name": name}, train__steps=3, train__batch_size=32)
    res = run(config.from_dict(raw), out=tmp_path, quiet=True)
    assert res.status == "completed" and res.summary["final_test_acc"] is not None


def test_cifar_loader_refuses_pickled_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": Evil(), "labels": [0]}, f)
    with pytest.raises(DataError, match="refusing to unpickle"):
        load("cifar10", root=str(tmp_path))
    assert not marker.exists()
