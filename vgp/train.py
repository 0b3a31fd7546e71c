"""``run(cfg)``: the one training loop, readable top to bottom.

Step ``s`` (0-based) is the s-th optimizer step: the forward and backward pass on batch ``s``
with the weights *before* update ``s``. Recorded steps: 0 (before any update), every
``log.every``-th, every ``train.eval_every``-th, and the last. Evaluation at step ``s`` sees
the same weights as that step's batch; a final evaluation after the last update is written as
step ``train.steps``.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import os
import platform
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import vgp
from vgp import activations, analysis, config, data as datasets, results
from vgp.errors import UserError
from vgp.models import mlp, recurrent, resnet
from vgp.optim import OPTIMIZERS
from vgp.record import KINDS, GradientRecorder

GRAD_COLUMNS = ["step", "layer", "name", "kind", "value"]
TIME_COLUMNS = ["step", "layer", "t", "value"]
METRIC_COLUMNS = ["step", "loss", "acc", "grad_norm", "grad_norm_clipped", "clipped", "lr", "elapsed_s",
                  "test_loss", "test_acc"]


@dataclass
class RunResult:
    folder: Path
    status: str  # completed | diverged
    summary: dict


def pick_device(name: str) -> torch.device:
    """'auto' is CUDA when available, else the CPU; asking for a missing GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device: '{name}' requested but CUDA is not available here; use device=cpu or device=auto")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"device: '{name}' requested but only {torch.cuda.device_count()} GPU(s) are visible")
    return torch.device(name)


def build_model(model_cfg: config.ModelConfig, data: datasets.Data):
    """The network a config describes, on the CPU, initialised (seed the global RNG first)."""
    act = activations.get(model_cfg.activation)
    m = model_cfg
    if m.arch == "mlp":
        net = mlp(data.shape, data.num_outputs, m.width, m.depth, act, m.init, m.bias_init, m.norm, m.skip)
    elif m.arch == "resnet":
        if len(data.shape) != 3:
            raise UserError(f"model.arch: a resnet needs image data of shape (C, H, W); data '{data.name}' gives "
                            f"inputs of shape {tuple(data.shape)} (image sets: digits, mnist, fashion_mnist, cifar10)")
        net = resnet(data.shape, data.num_outputs, m.width, m.depth, act, m.init, m.bias_init, m.norm, m.skip)
    else:
        if len(data.shape) != 2:
            raise UserError(f"model.arch: {m.arch} needs sequences of shape (T, F); data '{data.name}' gives inputs "
                            f"of shape {tuple(data.shape)} (sequence sets: adding, copy, seq_digits, seq_mnist)")
        net = recurrent(m.arch, data.shape, data.num_outputs, m.width, m.depth, act, m.init, m.bias_init,
                        m.recurrent_init, m.forget_bias, per_step=data.y_train.dim() == 2 and
                        data.task == "classification")
    return net, act


def batches(n: int, batch_size: int, seed: int, device):
    """Endless index batches, reshuffled every epoch from the run's seed; (B,) int64 on the device."""
    gen = torch.Generator().manual_seed(seed + 1)
    batch_size = min(batch_size, n)
    while True:
        perm = torch.randperm(n, generator=gen).to(device)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i:i + batch_size]


def loss_fn(task: str):
    """Cross-entropy for classes (per step for (B, T, C) outputs), mean squared error otherwise."""
    if task != "classification":
        return F.mse_loss
    return lambda logits, y: F.cross_entropy(logits.flatten(0, -2), y.flatten())


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction of correct predictions (of every position, for sequence outputs); on the device."""
    return (logits.argmax(-1) == y).float().mean()


@torch.no_grad()
def evaluate(model, x, y, task: str, chunk: int = 4096) -> tuple[float, float | None]:
    """Mean loss and accuracy (None for regression) over a whole set, in eval mode."""
    was_training = model.training
    model.eval()
    total, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    for i in range(0, len(x), chunk):
        out = model(x[i:i + chunk])
        yy = y[i:i + chunk]
        if task == "classification":  # per example: the mean over its positions, for sequence outputs
            total += F.cross_entropy(out.flatten(0, -2), yy.flatten(), reduction="sum") * len(yy) / yy.numel()
            correct += (out.argmax(-1) == yy).float().sum() * len(yy) / yy.numel()
        else:
            total += F.mse_loss(out, yy, reduction="sum") / out[0].numel()
    model.train(was_training)
    n = len(x)
    return total.item() / n, (correct.item() / n if task == "classification" else None)


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(vgp.__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _meta(device, started: str, status: str, **extra) -> dict:
    return {
        "status": status, "vgp": vgp.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
        platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "host": socket.gethostname(),
        "pid": os.getpid(), "git_commit": _git_commit(), "argv": sys.argv, "started": started, **extra,
    }


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _progress(quiet: bool, name: str, steps: int):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=quiet, transient=False)


def run(cfg: config.Config, out: str | Path | None = None, force: bool = False, quiet: bool = False) -> RunResult:
    """Train ``cfg`` and write its run folder ``<out>/<name>/``. Returns where, and how it ended.

    A diverged run (non-finite loss or gradient) is a result, not an error: its CSVs up to that
    step are kept. An exception or Ctrl-C marks the folder failed/interrupted and propagates.
    """
    # -- set-up ------------------------------------------------------------------------------
    device = pick_device(cfg.device)
    folder = results.prepare(Path(out if out is not None else cfg.out) / cfg.name, force)
    started, t_start = _now(), time.perf_counter()
    results.write_yaml(folder / "config.yaml", config.to_dict(cfg))
    results.write_json(folder / "meta.json", _meta(device, started, "running"))
    streams: list[results.CsvStream] = []
    try:
        torch.manual_seed(cfg.seed)
        data = datasets.load(cfg.data, cfg.seed).to(device)
        model, act = build_model(cfg.model, data)
        model.to(device).train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = OPTIMIZERS.build(cfg.train.optimizer, params)
        criterion = loss_fn(data.task)
        recorder = GradientRecorder(model.tracked(), act, params, cfg.log.kinds, model)
        grad_csv = results.CsvStream(folder / "grad_norms.csv", GRAD_COLUMNS)
        metrics_csv = results.CsvStream(folder / "metrics.csv", METRIC_COLUMNS)
        streams = [grad_csv, metrics_csv]
        time_csv = None
        if recorder.model is not None:  # recurrent: dLoss/dh_t per time step
            time_csv = results.CsvStream(folder / "time_grads.csv", TIME_COLUMNS)
            streams.append(time_csv)
        outcome = _train(cfg, model, data, opt, criterion, params, recorder, grad_csv, metrics_csv, time_csv,
                         quiet)
    except BaseException as e:
        for s in streams:
            s.close()  # rows so far stay in the .partial files
        # Ctrl-C, SIGTERM turned into SystemExit, a scheduler's requeue: interrupted, to be run again
        status = "failed" if isinstance(e, Exception) else "interrupted"
        if status == "failed":
            results.atomic_write(folder / "error.txt", "".join(traceback.format_exception(e)))
        results.write_json(folder / "meta.json", _meta(device, started, status, ended=_now(), error=repr(e)))
        raise

    # -- finish: CSVs get their final names, then the summary marks the folder finished ------
    for s in streams:
        s.finish()
    wall = time.perf_counter() - t_start
    summary = {**config.flatten(config.to_dict(cfg)), **outcome, "wall_s": round(wall, 3),
               **data.info}
    summary.update(analysis.summary_columns(folder))  # verdict, decay per layer, theory (reads the CSVs)
    results.write_json(folder / "meta.json", _meta(device, started, summary["status"], ended=_now(),
                                                   wall_s=summary["wall_s"], train_s=outcome["train_s"]))
    results.atomic_write(folder / "summary.csv", results.csv_text([summary], list(summary)))
    return RunResult(folder, summary["status"], summary)


def _train(cfg, model, data, opt, criterion, params, recorder, grad_csv, metrics_csv, time_csv, quiet) -> dict:
    """The loop. Returns the summary's outcome columns."""
    device = data.x_train.device
    clip, steps, every, eval_every = cfg.train.clip, cfg.train.steps, cfg.log.every, cfg.train.eval_every
    pairs = recorder.applicable()  # (kind, layer index) rows written to grad_norms.csv
    n_layers = len(recorder.names)
    flat_index = [KINDS.index(k) * n_layers + i for k, i in pairs]
    grad_prefixes = [f"{i + 1},{recorder.names[i]},{k}" for k, i in pairs]  # layer,name,kind
    grad_pos = [j for (k, _), j in zip(pairs, flat_index) if k in ("weight_grad", "bias_grad", "output_grad")]
    batch_iter = batches(len(data.x_train), cfg.train.batch_size, cfg.seed, device)
    no = torch.zeros((), dtype=torch.bool, device=device)
    nan = torch.full((), math.nan, device=device)
    pending: list[torch.Tensor] = []  # detached losses since the last recorded step
    status, diverged_step, grad_ratio, last_loss, done = "completed", None, None, None, 0

    t_loop = time.perf_counter()
    with recorder, _progress(quiet, cfg.name, steps) as progress:
        bar = progress.add_task(cfg.name, total=steps, loss="-")
        for step in range(steps):
            recording = step % every == 0 or step % eval_every == 0 or step == steps - 1
            test_loss = test_acc = None
            if step % eval_every == 0:  # the weights this step's batch sees
                test_loss, test_acc = evaluate(model, data.x_test, data.y_test, data.task)
            idx = next(batch_iter)
            x, y = data.x_train[idx], data.y_train[idx]

            # step: forward, backward, clip, update (with the recorder's three calls when recording)
            if recording:
                recorder.start()
            logits = model(x)
            loss = criterion(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            pending.append(loss.detach())
            if recording:
                recorder.after_backward()
                grads = [p.grad for p in params if p.grad is not None]
                gn = recorder.total_grad_norm
                clipped = no
                if clip.mode == "value":
                    clipped = torch.stack(torch._foreach_norm(grads, float("inf"))).max() > clip.value
                elif clip.mode == "norm":
                    clipped = gn + 1e-6 > clip.max_norm  # torch scales by max_norm / (norm + 1e-6)
            if clip.mode == "norm":
                torch.nn.utils.clip_grad_norm_(params, clip.max_norm)
            elif clip.mode == "value":
                torch.nn.utils.clip_grad_value_(params, clip.value)
            opt.step()
            done = step + 1
            if not recording:
                continue

            # record: everything of this step leaves the device in one transfer
            values = recorder.after_step()  # (len(KINDS), L)
            gnc = _total_norm(grads) if clip.mode != "none" else gn
            acc = accuracy(logits.detach(), y) if data.task == "classification" else nan
            scalars = torch.stack([loss.detach().float(), acc, gn, gnc, clipped.float()])
            parts = [values.flatten(), scalars, torch.stack(pending)]
            n_time = 0
            if recorder.time_values is not None:
                parts.append(recorder.time_values)
                n_time = len(recorder.time_keys)
            host = torch.cat(parts).tolist()
            pending.clear()
            elapsed = time.perf_counter() - t_loop
            nv = values.numel()
            flat, (l, a, g, gc, c) = host[:nv], host[nv:nv + 5]
            losses, time_norms = host[nv + 5:len(host) - n_time], host[len(host) - n_time:]
            if time_csv is not None:
                time_csv.write_values(step, [f"{k},{t}" for k, t in recorder.time_keys], time_norms)

            grad_csv.write_values(step, grad_prefixes, [flat[j] for j in flat_index])
            metrics_csv.write([[step, l, None if math.isnan(a) else a, g, gc, bool(c), opt.param_groups[0]["lr"],
                                round(elapsed, 4), test_loss, test_acc]])
            if step == 0 and "output_grad" in cfg.log.kinds:
                grad_ratio = _grad_ratio(flat, recorder)
            last_loss = l
            progress.update(bar, completed=done, loss=f"{l:.4g}")

            bad = [j for j, v in enumerate(losses) if not math.isfinite(v)]
            if bad:
                diverged_step = step - len(losses) + 1 + bad[0]
            elif not math.isfinite(g) or not all(math.isfinite(flat[j]) for j in grad_pos):
                diverged_step = step
            if diverged_step is not None:
                status = "diverged"
                break
    train_s = time.perf_counter() - t_loop

    # -- final evaluation, after the last update -------------------------------------------
    final_test_loss = final_test_acc = None
    if status == "completed":
        final_test_loss, final_test_acc = evaluate(model, data.x_test, data.y_test, data.task)
        metrics_csv.write([[steps, None, None, None, None, None, opt.param_groups[0]["lr"],
                            round(time.perf_counter() - t_loop, 4), final_test_loss, final_test_acc]])
    return {"status": status, "steps_done": done, "final_loss": last_loss, "final_test_loss": final_test_loss,
            "final_test_acc": final_test_acc, "grad_ratio": grad_ratio, "diverged_step": diverged_step,
            "train_s": round(train_s, 3)}


def _grad_ratio(flat: list[float], recorder: GradientRecorder) -> float | None:
    """output_grad of layer 1 over that of the last hidden layer (None without hidden layers, and for
    recurrent nets, whose layers' signal is in time_grads.csv)."""
    hidden = [i for i, t in enumerate(recorder.tracked) if t.output and t.act is not None]
    if not hidden:
        return None
    start = KINDS.index("output_grad") * len(recorder.tracked)
    first, last = flat[start + hidden[0]], flat[start + hidden[-1]]
    if last == 0:
        return math.nan if first == 0 else math.inf
    return first / last
