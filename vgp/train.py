"""``run(cfg)``: the one training loop, readable top to bottom.

Step ``s`` (0-based) is the s-th optimizer step: the forward and backward pass on batch ``s``
with the weights *before* update ``s``. Recorded steps: 0 (before any update), every
``log.every``-th, every ``train.eval_every``-th, and the last. Evaluation at step ``s`` sees
the same weights as that step's batch; a final evaluation after the last update is written as
step ``train.steps``.

Divergence is looked for on every step, not only recorded ones: each step leaves a device-side
flag (loss and total gradient norm finite), read with the losses at the next recorded step, so
``diverged_step`` does not depend on ``log.every`` and no step waits for the device. A
non-finite evaluation (the final one included) is divergence too.

Mixed precision (``train.precision`` bf16 or fp16): the forward pass, the loss and evaluation run
under ``torch.autocast``; weights, gradients and optimizer state stay float32. fp16 with
``train.loss_scale=dynamic`` scales the loss by ``torch.amp.GradScaler``'s scale S before the
backward pass and unscales the gradients right after it, so that everything recorded, clipped and
checked is the true gradient. A step whose scaled gradient overflowed is skipped by the scaler,
which halves S: that is how dynamic loss scaling finds its scale, not divergence (metrics.csv's
``skipped`` counts them, ``loss_scale`` is S). Divergence under a scaler is a non-finite loss, or a
gradient that overflows at S <= 1 (no amplification left to blame: an exploding gradient).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import vgp
from vgp import activations, analysis, config, data as datasets, results
from vgp.errors import UserError
from vgp.models import mlp, recurrent, resnet, transformer
from vgp.optim import OPTIMIZERS, SCHEDULES
from vgp.record import KINDS, GradientRecorder, _norms

GRAD_COLUMNS = ["step", "layer", "name", "kind", "value"]
TIME_COLUMNS = ["step", "layer", "t", "value"]
METRIC_COLUMNS = ["step", "loss", "acc", "grad_norm", "grad_norm_clipped", "clipped", "lr", "elapsed_s",
                  "test_loss", "test_acc", "loss_scale", "skipped"]
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def build_model(model_cfg: config.ModelConfig, data: datasets.Data, init_batch: torch.Tensor | None = None):
    """The network a config describes, on the CPU, initialised (seed the global RNG first).

    ``init_batch``: (B, *shape) inputs for a data-dependent init (``model.init: lsuv``); a run passes
    the batch its step 0 trains on (:func:`first_batch`). Other inits ignore it; lsuv without it
    raises ValueError."""
    act = activations.get(model_cfg.activation)
    m = model_cfg
    if init_batch is not None:
        init_batch = init_batch.cpu()
    if m.arch == "mlp":
        net = mlp(data.shape, data.num_outputs, m.width, m.depth, act, m.init, m.bias_init, m.norm, m.skip,
                  m.residual_scale, init_batch)
    elif m.arch == "resnet":
        if len(data.shape) != 3:
            raise UserError(f"model.arch: a resnet needs image data of shape (C, H, W); data '{data.name}' gives "
                            f"inputs of shape {tuple(data.shape)} (image sets: digits, mnist, fashion_mnist, cifar10)")
        net = resnet(data.shape, data.num_outputs, m.width, m.depth, act, m.init, m.bias_init, m.norm, m.skip,
                     m.residual_scale, init_batch)
    else:
        if len(data.shape) != 2:
            raise UserError(f"model.arch: {m.arch} needs sequences of shape (T, F); data '{data.name}' gives inputs "
                            f"of shape {tuple(data.shape)} (sequence sets: adding, copy, markov, seq_digits, "
                            f"seq_mnist)")
        per_step = data.y_train.dim() == 2 and data.task == "classification"
        if m.arch == "transformer":
            net = transformer(data.shape, data.num_outputs, m.width, m.depth, m.heads, m.mlp_ratio, act, m.init,
                              m.bias_init, m.norm, m.norm_position, m.residual_scale, m.positions, per_step)
            return net, act
        net = recurrent(m.arch, data.shape, data.num_outputs, m.width, m.depth, act, m.init, m.bias_init,
                        m.recurrent_init, m.forget_bias, per_step=per_step)
    return net, act


def batches(n: int, batch_size: int, seed: int, device):
    """Endless index batches, reshuffled every epoch from the run's seed; (B,) int64 on the device."""
    if batch_size > n:  # vgp.preflight says so before a run starts; a batch is never silently smaller
        raise UserError(f"train.batch_size: {batch_size} is more than the {n} training examples")
    gen = torch.Generator().manual_seed(seed + 1)
    while True:
        perm = torch.randperm(n, generator=gen).to(device)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i:i + batch_size]


def first_batch(data: datasets.Data, batch_size: int, seed: int) -> torch.Tensor:
    """The inputs step 0 trains on, (B, *shape): what :func:`batches` yields first, from a generator
    of its own (no random number stream of the run moves), for data-dependent inits."""
    return data.x_train[next(batches(len(data.x_train), batch_size, seed, data.x_train.device))]


def loss_fn(task: str):
    """Cross-entropy for classes (per step for (B, T, C) outputs), mean squared error otherwise."""
    if task != "classification":
        return F.mse_loss
    return lambda logits, y: F.cross_entropy(logits.flatten(0, -2), y.flatten())


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction of correct predictions (of every position, for sequence outputs); on the device."""
    return (logits.argmax(-1) == y).float().mean()


@torch.no_grad()
def evaluate(model, x, y, task: str, chunk: int = 4096, dtype: torch.dtype | None = None) -> tuple[float, float | None]:
    """Mean loss and accuracy (None for regression) over a whole set, in eval mode; ``dtype``: run the
    model under autocast to it (the training precision), None: as it is."""
    was_training = model.training
    model.eval()
    total, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    for i in range(0, len(x), chunk):
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(x[i:i + chunk]).float()
        yy = y[i:i + chunk]
        if task == "classification":  # per example: the mean over its positions, for sequence outputs
            total += F.cross_entropy(out.flatten(0, -2), yy.flatten(), reduction="sum") * len(yy) / yy.numel()
            correct += (out.argmax(-1) == yy).float().sum() * len(yy) / yy.numel()
        else:
            total += F.mse_loss(out, yy, reduction="sum") / out[0].numel()
    model.train(was_training)
    n = len(x)
    return total.item() / n, (correct.item() / n if task == "classification" else None)


def _total_norm(grads: list[torch.Tensor], exact: bool = False) -> torch.Tensor:
    """The norm of all gradients together: summed in float32 as torch's clip_grad_norm_ sums (the
    divergence flag of every step: cheap, and finite exactly where clip_grad_norm_'s is), or
    ``exact``ly, in float64, for what is written (see vgp.record._norms)."""
    if not grads:
        return torch.zeros((), dtype=torch.float64 if exact else None)
    return torch.linalg.vector_norm(_norms(grads) if exact else torch.stack(torch._foreach_norm(grads)))


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
        platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
        "host": socket.gethostname(),
        "pid": os.getpid(), "git_commit": _git_commit(), "argv": sys.argv, "started": started, **extra,
    }


class _NoProgress:
    """``_progress`` when quiet: no bar, and rich is not imported (a tenth of a second of a run's start)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def update(self, *args, **kwargs) -> None:
        pass


def _progress(quiet: bool, name: str, steps: int):
    if quiet:
        return _NoProgress()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=quiet, transient=False)


class Terminated(SystemExit):
    """SIGTERM or SIGHUP arrived (``timeout``, ``kill``, docker, a scheduler): the run ends as
    interrupted, and the process exits with status 128 + the signal's number."""


def _raise_terminated(signum, frame):
    raise Terminated(128 + signum)


@contextlib.contextmanager
def _signals_as_exceptions():
    """Turn SIGTERM/SIGHUP into :class:`Terminated` while a run writes its folder, so that the
    folder is marked interrupted and its rows flushed (a plain SIGTERM runs no ``finally``). Only
    where the signal would otherwise kill the process: a sweep worker's or submitit's own handlers
    are left alone, and so is any thread but the main one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_DFL:
            old[sig] = signal.signal(sig, _raise_terminated)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def run(cfg: config.Config, out: str | Path | None = None, force: bool = False, quiet: bool = False,
        lock: bool = True) -> RunResult:
    """Train ``cfg`` and write its run folder ``<out>/<name>/``. Returns where, and how it ended.

    A diverged run (non-finite loss, gradient or evaluation) is a result, not an error: its CSVs up
    to the recorded step that found it are kept. Every other way a run can end leaves the folder
    saying so: an exception (also while finishing: a full disk, a read-only folder) marks it
    ``failed`` with ``error.txt``; Ctrl-C, SIGTERM/SIGHUP or a scheduler's requeue (SystemExit) mark
    it ``interrupted``; the rows of every recorded step so far stay in the ``.partial`` files; and
    then the exception propagates. Only a finished run has ``summary.csv``.

    ``lock``: take the run folder's lock (:func:`vgp.results.run_lock`); False when the caller
    holds it (:func:`vgp.launch.run_cell`). Raises UserError when another process holds it, or when
    the folder already holds a finished run and ``force`` is False.
    """
    device = pick_device(cfg.device)
    from vgp import preflight  # what the model, its first step or memory would reject: before any folder exists

    preflight.check(cfg, f"config '{cfg.name}'", device=str(device))
    folder = Path(out if out is not None else cfg.out) / cfg.name
    with contextlib.ExitStack() as stack:
        if lock and not stack.enter_context(results.run_lock(folder)):
            raise UserError(f"{folder} is being written by another run{_holder(folder)}; wait for it to end, "
                            f"or give this run another name (name=...) or --out")
        results.prepare(folder, force)
        with _signals_as_exceptions():
            return _run_in(cfg, folder, device, quiet)


def _holder(folder: Path) -> str:
    """' (pid 123 on host, started ...)' from the other run's meta.json, where it can be read."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        return f" (pid {meta['pid']} on {meta['host']}, started {meta['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _run_in(cfg: config.Config, folder: Path, device: torch.device, quiet: bool) -> RunResult:
    # -- set-up ------------------------------------------------------------------------------
    started, t_start = results.now(), time.perf_counter()
    streams: list[results.CsvStream] = []
    finished = False
    try:
        results.write_yaml(folder / "config.yaml", config.to_dict(cfg))
        results.write_json(folder / "meta.json", _meta(device, started, "running"))
        torch.manual_seed(cfg.seed)
        data = datasets.load(cfg.data, cfg.seed).to(device)
        model, act = build_model(cfg.model, data, first_batch(data, cfg.train.batch_size, cfg.seed))
        model.to(device).train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = OPTIMIZERS.build(cfg.train.optimizer, params)
        schedule = SCHEDULES.build(cfg.train.schedule, opt, cfg.train.steps)
        criterion = loss_fn(data.task)
        recorder = GradientRecorder(model.tracked(), act, params, cfg.log.kinds, model,
                                    dtype=PRECISIONS[cfg.train.precision])
        grad_csv = results.CsvStream(folder / "grad_norms.csv", GRAD_COLUMNS)
        metrics_csv = results.CsvStream(folder / "metrics.csv", METRIC_COLUMNS)
        streams = [grad_csv, metrics_csv]
        time_csv = None
        if recorder.model is not None:  # recurrent: dLoss/dh_t per time step
            time_csv = results.CsvStream(folder / "time_grads.csv", TIME_COLUMNS)
            streams.append(time_csv)
        outcome = _train(cfg, model, data, opt, schedule, criterion, params, recorder, grad_csv, metrics_csv,
                         time_csv, quiet)

        # -- finish: CSVs get their final names, then the summary marks the folder finished ----
        for s in streams:
            s.finish()
        wall = time.perf_counter() - t_start
        summary = {**config.flatten(config.to_dict(cfg)), **outcome, "wall_s": round(wall, 3), **data.info}
        summary.update(analysis.summary_columns(folder))  # verdict, decay per layer, theory (reads the CSVs)
        results.write_json(folder / "meta.json", _meta(device, started, summary["status"], ended=results.now(),
                                                       wall_s=summary["wall_s"], train_s=outcome["train_s"]))
        results.atomic_write(folder / "summary.csv", results.csv_text([summary], list(summary)))
        finished = True
    except BaseException as e:
        if not finished:  # (an interrupt just after the marker was written: the run is finished)
            _record_end(folder, streams, e, device, started, quiet)
        raise
    return RunResult(folder, summary["status"], summary)


def _record_end(folder: Path, streams: list, e: BaseException, device, started: str, quiet: bool) -> None:
    """Mark an unfinished run failed or interrupted. Never raises: it runs when the disk may be full or
    the folder read-only, and signals wait until it is done. Falls back to rewriting meta.json in
    place, and as a last resort says on stderr that the folder could not be marked."""
    # a second Ctrl-C while the folder is marked must not stop the marking: held off by the mask
    # where the main thread would get it, by the handlers where another thread does (see signals_held)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, results.ENDING_SIGNALS)
    try:
        with results.signals_held(then_raise=False):
            for s in streams:
                try:
                    s.close()  # rows so far stay in the .partial files
                except OSError:
                    pass
            # Ctrl-C, SIGTERM, a scheduler's requeue (SystemExit): interrupted, to be run again
            status = "failed" if isinstance(e, Exception) else "interrupted"
            problems = []
            if status == "failed":
                try:
                    results.atomic_write(folder / "error.txt", "".join(traceback.format_exception(e)))
                except OSError as err:
                    problems.append(f"error.txt: {err}")
            meta = results.json_text(_meta(device, started, status, ended=results.now(), error=repr(e)[:2000]))
            try:
                results.atomic_write(folder / "meta.json", meta)
            except OSError as err:
                try:  # no room for a new file: overwrite the old one's blocks
                    with open(folder / "meta.json", "w") as f:
                        f.write(meta)
                except OSError as err2:
                    problems.append(f"meta.json: {err}; {err2}")
            if problems:
                print(f"vgp: {folder}: the run ended ({status}: {e!r}) but this could not be recorded: "
                      + "; ".join(problems), file=sys.stderr)
            elif status == "interrupted" and not quiet:
                why = f"signal {e.code - 128}" if isinstance(e, Terminated) else type(e).__name__
                print(f"vgp: {folder}: interrupted ({why}); the rows of every recorded step are in its .partial files",
                      file=sys.stderr)
    except BaseException:  # the handler must not replace the run's own exception
        pass
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _train(cfg, model, data, opt, schedule, criterion, params, recorder, grad_csv, metrics_csv, time_csv,
           quiet) -> dict:
    """The loop. Returns the summary's outcome columns. ``schedule``: a torch lr scheduler, stepped
    after every update; metrics.csv's ``lr`` is the lr that the row's update used (the final
    evaluation's row: the schedule's value at step train.steps, where no update follows)."""
    device = data.x_train.device
    clip, steps, every, eval_every = cfg.train.clip, cfg.train.steps, cfg.log.every, cfg.train.eval_every
    pairs = recorder.applicable()  # (kind, layer index) rows written to grad_norms.csv
    n_layers = len(recorder.names)
    flat_index = [KINDS.index(k) * n_layers + i for k, i in pairs]
    grad_prefixes = [f"{i + 1},{recorder.names[i]},{k}" for k, i in pairs]  # layer,name,kind
    streams = [c for c in (grad_csv, metrics_csv, time_csv) if c is not None]
    batch_iter = batches(len(data.x_train), cfg.train.batch_size, cfg.seed, device)
    no = torch.zeros((), dtype=torch.bool, device=device)
    nan = torch.full((), math.nan, device=device)
    pending: list[torch.Tensor] = []  # detached losses since the last recorded step
    finite: list[torch.Tensor] = []  # per step since then: not diverged (device-side flags)
    skips: list[torch.Tensor] = []  # per step since then: the loss scaler skipped the update
    status, diverged_step, grad_ratio, last_loss, done, skipped_steps = "completed", None, None, None, 0, 0
    amp = PRECISIONS[cfg.train.precision] if cfg.train.precision != "fp32" else None  # autocast's dtype
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16" and
                                  cfg.train.loss_scale == "dynamic")
    one = torch.ones((), device=device)
    autocast = functools.partial(torch.autocast, device.type, dtype=amp) if amp else contextlib.nullcontext

    t_loop = time.perf_counter()
    with recorder, _progress(quiet, cfg.name, steps) as progress, warnings.catch_warnings():
        # a step the scaler skips leaves the scheduler's step without an optimizer step: as intended
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        bar = progress.add_task(cfg.name, total=steps, loss="-")
        for step in range(steps):
            recording = step % every == 0 or step % eval_every == 0 or step == steps - 1
            test_loss = test_acc = None
            if step % eval_every == 0:  # the weights this step's batch sees
                test_loss, test_acc = evaluate(model, data.x_test, data.y_test, data.task, dtype=amp)
            idx = next(batch_iter)
            x, y = data.x_train[idx], data.y_train[idx]

            # step: forward, backward, clip, update (with the recorder's three calls when recording)
            if recording:
                recorder.start()
            with autocast():
                logits = model(x)
                loss = criterion(logits, y)  # float32: autocast runs losses in float32
            opt.zero_grad(set_to_none=True)
            scale = scaler.scale(one) if scaler.is_enabled() else None  # this step's loss scale S
            scaler.scale(loss).backward()
            scaler.unscale_(opt)  # the true gradients from here on (nothing without a scaler)
            pending.append(loss.detach())
            grads = [p.grad for p in params if p.grad is not None]
            if recording:
                recorder.after_backward(scale)
                gn = recorder.total_grad_norm
                clipped = no
                if clip.mode == "value":
                    clipped = torch.stack(torch._foreach_norm(grads, float("inf"))).max() > clip.value
            # divergence is looked for on every step, without waiting for the device: a flag per step,
            # read with the losses at the next recorded step. The gradient's total norm is finite
            # exactly when every entry is, except where its float32 sum of squares overflows (a norm
            # above 2**64 = 1.8e19: an exploding gradient, counted as one, by step_flags alike for the
            # float32 norm here and the recorder's float64 one). Clipping by norm computes it anyway.
            if clip.mode == "norm":
                norm = torch.nn.utils.clip_grad_norm_(params, clip.max_norm)  # the norm before clipping
                clipped = norm + 1e-6 > clip.max_norm  # as torch scales: by max_norm / (norm + 1e-6)
            else:
                norm = gn if recording else _total_norm(grads)
            ok, skipped = step_flags(pending[-1], norm, scale)
            finite.append(ok)
            if skipped is not None:
                skips.append(skipped)
            if clip.mode == "value":
                torch.nn.utils.clip_grad_value_(params, clip.value)
            lr = opt.param_groups[0]["lr"]  # what this update uses
            scaler.step(opt)  # opt.step(), unless the scaled gradient overflowed
            scaler.update()
            schedule.step()
            done = step + 1
            if not recording:
                continue

            # record: everything of this step leaves the device in one transfer
            values = recorder.after_step()  # (len(KINDS), L)
            gnc = _total_norm(grads, exact=True) if clip.mode != "none" else gn
            acc = accuracy(logits.detach(), y) if data.task == "classification" else nan
            scalars = torch.stack([loss.detach().double(), acc.double(), gn, gnc, clipped.double()])  # norms: float64
            parts = [values.flatten(), scalars, torch.stack(pending), torch.stack(finite).float(),
                     torch.stack([scale if scale is not None else one, torch.stack(skips).sum() if skips else 0 * one])]
            n_time = 0
            if recorder.time_values is not None:
                parts.append(recorder.time_values)
                n_time = len(recorder.time_keys)
            host = torch.cat(parts).tolist()
            n_pending = len(pending)
            pending.clear()
            finite.clear()
            elapsed = time.perf_counter() - t_loop
            nv = values.numel()
            flat, (l, a, g, gc, c) = host[:nv], host[nv:nv + 5]
            ok = host[nv + 5 + n_pending:nv + 5 + 2 * n_pending]  # 1.0 where loss and gradient were finite
            s_used, n_skipped = host[nv + 5 + 2 * n_pending:nv + 7 + 2 * n_pending]
            skips.clear()
            skipped_steps += int(n_skipped)
            time_norms = host[len(host) - n_time:]
            with results.signals_held():  # the step's rows reach every CSV or none
                if time_csv is not None:
                    time_csv.write_values(step, [f"{k},{t}" for k, t in recorder.time_keys], time_norms)
                grad_csv.write_values(step, grad_prefixes, [flat[j] for j in flat_index])
                metrics_csv.write([[step, l, None if math.isnan(a) else a, g, gc, bool(c), lr,
                                    round(elapsed, 4), test_loss, test_acc, s_used, int(n_skipped)]])
                for s in streams:
                    s.flush()  # a kill from now on loses none of this step's rows
            if step == 0 and "output_grad" in cfg.log.kinds:
                grad_ratio = _grad_ratio(flat, recorder)
            last_loss = l
            progress.update(bar, completed=done, loss=f"{l:.4g}")

            bad = [j for j, v in enumerate(ok) if v != 1.0]
            if bad:  # the first step whose loss or gradient was not finite
                diverged_step = step - n_pending + 1 + bad[0]
            elif test_loss is not None and not math.isfinite(test_loss):
                diverged_step = step  # the weights this step saw give a non-finite test loss
            if diverged_step is not None:
                status = "diverged"
                break
    train_s = time.perf_counter() - t_loop

    # -- final evaluation, after the last update -------------------------------------------
    final_test_loss = final_test_acc = None
    if status == "completed":
        final_test_loss, final_test_acc = evaluate(model, data.x_test, data.y_test, data.task, dtype=amp)
        metrics_csv.write([[steps, None, None, None, None, None, opt.param_groups[0]["lr"],
                            round(time.perf_counter() - t_loop, 4), final_test_loss, final_test_acc, None, None]])
        if not math.isfinite(final_test_loss):  # the last update broke the weights
            status, diverged_step = "diverged", steps
    return {"status": status, "steps_done": done, "final_loss": last_loss, "final_test_loss": final_test_loss,
            "final_test_acc": final_test_acc, "grad_ratio": grad_ratio, "diverged_step": diverged_step,
            "skipped_steps": skipped_steps, "train_s": round(train_s, 3)}


FLOAT32_NORM_MAX = 2.0**64  # the largest finite norm torch sums in float32: sqrt(3.4e38), rounded


def step_flags(loss: torch.Tensor, norm: torch.Tensor, scale: torch.Tensor | None):
    """(the step did not diverge, the loss scaler skips its update: None without a scaler), as 0-d
    bool tensors on the device. ``norm``: the total norm of the unscaled gradients, in float32 (as
    torch's clip_grad_norm_ takes it) or float64 (the recorder's); the gradient counts as exploded
    where an entry is not finite or the norm exceeds 2**64 (1.8e19), where a float32 sum of squares
    overflows, so that both give the same flag; ``scale``: the step's loss scale S.

    Without a scaler, a non-finite loss or gradient is divergence. With one, a non-finite gradient
    makes the scaler skip the update and halve S, which is dynamic loss scaling at work, not
    divergence, while S > 1; at S <= 1 the gradient overflowed with no amplification to blame: an
    exploding gradient, divergence. A non-finite loss (float32 under autocast) is divergence always."""
    grad_ok = norm <= FLOAT32_NORM_MAX  # False for inf and NaN too
    loss_ok = torch.isfinite(loss)
    if scale is None:
        return grad_ok & loss_ok, None
    return (grad_ok | (scale > 1)) & loss_ok, ~grad_ok


def _grad_ratio(flat: list[float], recorder: GradientRecorder) -> float | None:
    """output_grad of layer 1 over that of the last hidden layer (None without hidden layers, and for
    recurrent nets, whose layers' signal is in time_grads.csv); for a transformer, of the residual
    stream after the first block over that after the last."""
    hidden = [i for i, t in enumerate(recorder.tracked) if t.layer is None and t.stream is not None] or \
        [i for i, t in enumerate(recorder.tracked) if t.output and t.act is not None]
    return recorder.output_grad_ratio(flat, hidden) if hidden else None
