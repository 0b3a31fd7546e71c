"""The CUDA path: device selection, a run on the GPU, recorded norms equal to the CPU's."""

import pandas as pd
import pytest
import torch

from conftest import tiny
from vgp import config
from vgp.train import pick_device, run

pytestmark = pytest.mark.gpu


def test_auto_picks_cuda():
    assert pick_device("auto").type == "cuda"
    assert pick_device("cuda:0") == torch.device("cuda:0")


@pytest.mark.parametrize("over", [
    dict(model__activation="tanh", model__norm="batchnorm"),
    dict(model__arch="resnet", model__depth=8, model__width=4, data={"name": "digits", "n_test": 1733}),
    dict(model__arch="lstm", model__depth=1, data={"name": "adding", "seq_len": 20, "n_train": 64, "n_test": 16}),
])
def test_cuda_run_records_the_cpu_numbers(tmp_path, over, monkeypatch):
    # full float32 on the GPU too (cuDNN convolutions default to TF32)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)

    def once(device):
        cfg = config.from_dict(tiny(name=device.replace(":", ""), device=device, train__steps=3, **over))
        res = run(cfg, out=tmp_path, quiet=True)
        assert res.status == "completed"
        return pd.read_csv(res.folder / "grad_norms.csv"), res.folder

    (cpu, _), (gpu, folder) = once("cpu"), once("cuda")
    assert '"device": "cuda' in (folder / "meta.json").read_text()
    merged = cpu.merge(gpu, on=["step", "layer", "kind"], suffixes=("_cpu", "_gpu"))
    assert len(merged) == len(cpu) == len(gpu)
    step0 = merged[merged.step == 0]
    # float32 on both: the reductions differ in order only
    assert step0.value_gpu.to_numpy() == pytest.approx(step0.value_cpu.to_numpy(), rel=1e-3, abs=1e-9)
