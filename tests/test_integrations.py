"""The Lightning and Hugging Face callbacks: a real Trainer.fit / Trainer.train writes a run folder that
vgp reads, with the gradients an independent backward pass gives."""

import copy
import csv
import importlib
import subprocess
import sys

import pytest
import torch
from torch import nn

from vgp import results


def rows(folder, name: str) -> list[dict]:
    with open(folder / name, newline="") as f:
        return list(csv.DictReader(f))


def grads_at(folder, step: int, kind: str = "weight_grad") -> dict[str, float]:
    return {r["name"]: float(r["value"]) for r in rows(folder, "grad_norms.csv")
            if int(r["step"]) == step and r["kind"] == kind}


def steps(folder) -> list[int]:
    return sorted({int(r["step"]) for r in rows(folder, "grad_norms.csv")})


def test_importing_vgp_imports_no_framework():
    code = ("import sys, vgp, vgp.integrations; "
            "assert not {'lightning', 'pytorch_lightning', 'transformers'} & set(sys.modules), sys.modules.keys()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("module, blocked, extra", [
    ("vgp.integrations.lightning", ["lightning", "lightning.pytorch", "pytorch_lightning"], "lightning"),
    ("vgp.integrations.hf", ["transformers"], "hf"),
])
def test_missing_framework_says_what_to_install(monkeypatch, module, blocked, extra):
    monkeypatch.delitem(sys.modules, module, raising=False)
    for name in blocked:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: import raises ImportError
    with pytest.raises(ImportError, match=rf"pip install 'vgp\[{extra}\]'"):
        importlib.import_module(module)


# --- Lightning ---------------------------------------------------------------------------------------

def _lightning_module(fail_at=None):
    L = pytest.importorskip("lightning")

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))

        def training_step(self, batch, batch_idx):
            if batch_idx == fail_at:
                raise RuntimeError("boom")
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def validation_step(self, batch, batch_idx):  # runs while hooks for the next recorded step wait
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return L, Tiny


def _fit(out, max_steps, every, fail_at=None, **trainer_kwargs):
    """Fit the tiny MLP on 64 random examples in batches of 8 (in order); returns the module as it was
    before training and the data."""
    L, Tiny = _lightning_module(fail_at)
    from vgp.integrations.lightning import VGPCallback

    torch.manual_seed(0)
    model = Tiny()
    before = copy.deepcopy(model)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[VGPCallback(out, every=every)], **trainer_kwargs)
    trainer.fit(model, loader, val_dataloaders=loader)
    return before, x, y


def _reference(model, x, y, batches: int) -> tuple[dict[str, float], float]:
    """weight_grad of each Linear and the loss, by hand: the mean of the first ``batches`` batches' losses,
    as an optimizer step with that many accumulated batches sees it."""
    model.zero_grad()
    loss = sum(nn.functional.mse_loss(model.net(x[8 * b:8 * b + 8]), y[8 * b:8 * b + 8]) for b in range(batches))
    loss = loss / batches
    loss.backward()
    return {f"net.{i}": model.net[i].weight.grad.double().norm().item() for i in (0, 2, 4)}, loss.item()


def test_lightning_fit_records_each_optimizer_step(tmp_path):
    out = tmp_path / "run"
    # clipping comes after the record; a validation loop after every 2 batches, and a sanity check first
    before, x, y = _fit(out, max_steps=5, every=2, gradient_clip_val=1e-3, val_check_interval=2, limit_val_batches=2)
    assert results.read_status(out) == "completed"
    assert steps(out) == [0, 2, 4]
    want, loss = _reference(before, x, y, batches=1)
    assert grads_at(out, 0) == pytest.approx(want, rel=1e-5)
    metrics = rows(out, "metrics.csv")
    assert [int(r["step"]) for r in metrics] == [0, 2, 4]
    assert float(metrics[0]["loss"]) == pytest.approx(loss, rel=1e-5)
    assert float(metrics[0]["lr"]) == 0.1


def test_lightning_fp16_loss_scale_is_divided_out_of_the_output_gradients(tmp_path):
    """16-mixed with a real GradScaler (on the CPU, Lightning would pick bf16 and no scaler, so the plugin is
    given): the output gradients the hooks saw were S = 1024 times the true ones; the callback passes S
    to rec.step, so output_grad equals the fp32 run's within fp16 rounding, not 1024 times it."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    _fit(tmp_path / "fp32", max_steps=1, every=1)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))
    _fit(tmp_path / "fp16", max_steps=1, every=1, plugins=[plugin])
    want = {r["name"]: float(r["value"]) for r in rows(tmp_path / "fp32", "grad_norms.csv") if r["kind"] == "output_grad"}
    got = {r["name"]: float(r["value"]) for r in rows(tmp_path / "fp16", "grad_norms.csv") if r["kind"] == "output_grad"}
    assert set(got) == set(want) == {"net.0", "net.2", "net.4"}
    for name, v in want.items():
        assert got[name] == pytest.approx(v, rel=2e-2), name  # fp16 forward and backward


def test_lightning_records_once_per_optimizer_step_when_accumulating(tmp_path):
    out = tmp_path / "run"
    before, x, y = _fit(out, max_steps=3, every=1, accumulate_grad_batches=2)  # 3 optimizer steps, 6 batches
    assert results.read_status(out) == "completed"
    assert steps(out) == [0, 1, 2]
    want, loss = _reference(before, x, y, batches=2)
    assert grads_at(out, 0) == pytest.approx(want, rel=1e-5)
    assert float(rows(out, "metrics.csv")[0]["loss"]) == pytest.approx(loss, rel=1e-5)


def test_lightning_exception_leaves_a_failed_folder(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        _fit(out, max_steps=6, every=2, fail_at=3)
    assert results.read_status(out) == "failed"
    assert not (out / "grad_norms.csv").exists()  # a failed run's rows stay in grad_norms.csv.partial
    assert "0,1,net.0,weight_grad," in (out / "grad_norms.csv.partial").read_text()


# --- Hugging Face -----------------------------------------------------------------------------------

def _gpt2():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # the Trainer needs it
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # no dropout: repeatable
    return transformers, transformers.GPT2LMHeadModel(config)


def _train(out, tmp_path, model, data, every, callback=None, **args):
    transformers = pytest.importorskip("transformers")
    from vgp.integrations.hf import VGPCallback

    callback = callback or VGPCallback(out, every=every)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=2,
                                          report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
                                          disable_tqdm=True, **args)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    with callback:
        trainer.train()


@pytest.mark.parametrize("max_grad_norm", [0.0, 1e-3])
def test_hf_train_records_each_optimizer_step(tmp_path, max_grad_norm):
    """Every example is the same sequence, so the first batch is known whatever the Trainer's shuffling;
    the Trainer clips before its first hook after backward, so with clipping the norms are the clipped ones.
    The first label is masked: the Trainer divides the summed loss by its count of labels that are not
    -100 (num_items_in_batch) before the model shifts them by one, so only then is its loss the mean."""
    _, model = _gpt2()
    before = copy.deepcopy(model)
    ids = torch.randint(0, 100, (16,))
    labels = torch.cat([torch.tensor([-100]), ids[1:]])
    data = [{"input_ids": ids, "labels": labels} for _ in range(8)]
    out = tmp_path / "run"
    _train(out, tmp_path, model, data, every=2, max_steps=4, max_grad_norm=max_grad_norm)
    assert results.read_status(out) == "completed"
    assert steps(out) == [0, 2]
    assert len(rows(out, "metrics.csv")) == 2

    loss = before(input_ids=torch.stack([ids, ids]), labels=torch.stack([labels, labels])).loss
    loss.backward()
    total = torch.nn.utils.get_total_norm([p.grad for p in before.parameters()]).item()
    scale = min(1.0, max_grad_norm / (total + 1e-6)) if max_grad_norm else 1.0
    got = grads_at(out, 0)
    assert got, "no weight_grad rows"
    modules = dict(before.named_modules())
    for name, value in got.items():
        assert value == pytest.approx(modules[name].weight.grad.double().norm().item() * scale, rel=1e-4), name
    assert float(rows(out, "metrics.csv")[0]["loss"]) == pytest.approx(loss.item(), rel=1e-5)


def test_hf_records_once_per_optimizer_step_when_accumulating(tmp_path):
    _, model = _gpt2()
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 100, (12, 16))]
    out = tmp_path / "run"
    _train(out, tmp_path, model, data, every=1, max_steps=3, gradient_accumulation_steps=2)
    assert results.read_status(out) == "completed"
    assert steps(out) == [0, 1, 2]


def test_hf_exception_leaves_a_failed_folder(tmp_path):
    _, model = _gpt2()
    calls = []

    def fail_on_third(module, args, kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")

    model.register_forward_pre_hook(fail_on_third, with_kwargs=True)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 100, (8, 16))]
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        _train(out, tmp_path, model, data, every=1, max_steps=4)
    assert results.read_status(out) == "failed"


# --- what they write, read by vgp --------------------------------------------------------------------

@pytest.mark.slow  # two CLI processes: about 10 s
@pytest.mark.parametrize("framework", ["lightning", "hf"])
def test_vgp_reads_the_folder(tmp_path, cli, framework):
    out = tmp_path / "run"
    if framework == "lightning":
        _fit(out, max_steps=5, every=2)
    else:
        _, model = _gpt2()
        data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 100, (8, 16))]
        _train(out, tmp_path, model, data, every=2, max_steps=4)
    assert results.read_status(out) == "completed"
    for args in (("diagnose", out), ("plot", out, "-o", tmp_path / "plots")):
        done = cli(*args)
        assert done.returncode == 0, done.stdout + done.stderr
    assert any((tmp_path / "plots").iterdir())
