"""Several runs of one MLP, vanilla RNN or GRU config, differing only in their seed (or init,
activation, or optimizer arguments), trained as one batched model: ``run_batched(cfgs)`` writes the
same run folders as ``vgp run`` of each config alone, several times faster for small nets on the CPU.

Each member is built exactly as alone (``torch.manual_seed(seed)``, its own data set, its own
init), then the K members' weights are stacked on a leading member dimension: a (K, out, in)
weight per layer, a forward pass of ``torch.baddbmm`` on (K, B, in) inputs, each member fed its own
batch (its own data, its own batch order). The loss is the sum of the members' own mean losses, so
each member's gradient is its solo gradient; the optimizers vgp has are elementwise, so one
optimizer over the stacked tensors updates each member as its own would, to within the last bit of
each update (torch's fused kernel for sgd, adam, adamw and adagrad: one pass over each stacked
tensor; members whose optimizer arguments differ get one optimizer each, over views that share the
stacked storage). Members with different activations are ordered so that equal ones are
adjacent, and each activation is applied to its members' slice of every layer. Clipping by
norm scales each member by its own total norm. The recorder's statistics are taken per member
(:func:`vgp.record.act_stats` on (layers x members, B, U) slices), and every member writes its own
folder with the same files, columns and statuses as :func:`vgp.train.run`; ``meta.json`` says
``"batched": K``.

A member that diverges ends its folder as diverged at the step it would alone; the others go on
(the diverged member's slice is still computed, and ignored). An exception, Ctrl-C or SIGTERM marks
every member not yet finished failed or interrupted, as ``vgp run`` would.

A vanilla RNN's or GRU's members are stacked in :class:`vgp.models.rnn.StackedRecurrent`, unrolled
over time (the fused kernels take one weight set), each member's dLoss/dh_t written to its own
time_grads.csv; an LSTM is not batched (its fused kernel alone is faster on the CPU).

What can be batched is decided by :func:`batchable`: model.arch mlp (without batch/layer norm), rnn
or gru, one of vgp's elementwise optimizers, and configs equal except for the keys in :data:`MAY_DIFFER`.
A config key this module does not know (a setting added later) must have its default value.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import time
from pathlib import Path

from vgp import config, results
from vgp.config import KINDS
from vgp.errors import UserError
from vgp.optim import OPTIMIZERS, SCHEDULES
from vgp.registry import LazyModule

# imported on first use: batchable() and groups() serve a sweep's planning without torch
torch, F = LazyModule("torch"), LazyModule("torch.nn.functional")
train, record, analysis = LazyModule("vgp.train"), LazyModule("vgp.record"), LazyModule("vgp.analysis")
datasets = LazyModule("vgp.data")

# keys whose values may differ between the members of one batched model (prefixes of flattened keys)
MAY_DIFFER = ("name", "out", "seed", "model.init", "model.bias_init", "model.recurrent_init", "model.activation",
              "train.optimizer")
# the keys batched training knows (a key, or a section or spec ending in "."): any other key, such as a
# setting added to vgp later, must keep its default value, or the config is not batchable
KNOWN = ("name", "out", "seed", "device", "model.arch", "model.depth", "model.width", "model.activation.",
         "model.init.", "model.bias_init.", "model.norm", "model.skip", "model.recurrent_init.", "model.forget_bias",
         "data.", "train.steps", "train.batch_size", "train.optimizer.", "train.schedule.", "train.clip.",
         "train.eval_every", "log.every", "log.kinds")
ARCHS = ("mlp", "rnn", "gru")  # what vgp.models.StackedMLP and StackedRecurrent stack
OPTIMIZERS_OK = ("sgd", "adam", "adamw", "rmsprop", "adagrad")  # elementwise: a stacked tensor updates per member
# the devices where torch has a fused kernel for the optimizer (Adagrad's: the CPU only)
FUSED = {"sgd": ("cpu", "cuda"), "adam": ("cpu", "cuda"), "adamw": ("cpu", "cuda"), "adagrad": ("cpu",)}


def _flat(cfg: config.Config) -> dict:
    return config.flatten(config.to_dict(cfg))


@functools.cache
def _defaults() -> dict:
    return _flat(config.Config())


def _known(key: str) -> bool:
    return any(key.startswith(k) if k.endswith(".") else key == k for k in KNOWN)


def _differs_ok(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in MAY_DIFFER)


def batchable(cfgs: list[config.Config], device=None) -> str | None:
    """None when ``cfgs`` can be trained as one batched model, else why not (one sentence naming the key).
    ``device`` (where they would run; None: not known yet): recurrent nets are batched on the CPU only.
    On a GPU each member alone runs cuDNN's fused recurrent kernel, a few launches per layer and step,
    where the batched step is unrolled over time, several launches per time step (not measured here:
    no GPU; on the CPU, scripts/bench_rnn_batched.py)."""
    if not cfgs:
        return "no configs"
    defaults = _defaults()
    flats = [_flat(c) for c in cfgs]
    for cfg, flat in zip(cfgs, flats):
        m = cfg.model
        if m.arch == "lstm":
            return ("model.arch=lstm: an LSTM is not batched: alone, its fused kernel is faster on the CPU than "
                    "a batched unrolled cell (scripts/bench_rnn_batched.py)")
        if m.arch not in ARCHS:
            return f"model.arch={m.arch}: only {', '.join(ARCHS)} are batched"
        if m.norm != "none":
            return f"model.norm={m.norm}: normalisation layers are not batched"
        if cfg.train.precision != "fp32":
            return f"train.precision={cfg.train.precision}: mixed precision is not batched"
        opt = cfg.train.optimizer["name"]
        if opt not in OPTIMIZERS_OK:
            return f"train.optimizer.name={opt}: only {', '.join(OPTIMIZERS_OK)} are batched"
        for key, value in flat.items():
            if not _known(key) and (key not in defaults or value != defaults[key]):
                return f"{key}={value}: a setting batched training does not know"
    first = {k: v for k, v in flats[0].items() if not _differs_ok(k)}
    for cfg, flat in zip(cfgs[1:], flats[1:]):
        other = {k: v for k, v in flat.items() if not _differs_ok(k)}
        if other != first:
            key = next(k for k in sorted(set(first) | set(other)) if first.get(k) != other.get(k))
            return (f"{key} differs ({first.get(key)} in {cfgs[0].name}, {other.get(key)} in {cfg.name}); "
                    f"only {', '.join(MAY_DIFFER[2:])} may")
    if cfgs[0].model.arch != "mlp" and any(c.model.activation != cfgs[0].model.activation for c in cfgs):
        return f"model.activation differs: only an mlp's members may differ in activation ({cfgs[0].model.arch})"
    if len({c.name for c in cfgs}) < len(cfgs):
        return "two configs have the same name"
    if device is not None and cfgs[0].model.arch != "mlp" and torch.device(device).type != "cpu":
        return (f"model.arch={cfgs[0].model.arch} on {device}: recurrent nets are batched on the CPU only "
                "(alone, each runs cuDNN's fused kernel)")
    return None


def group_key(cfg: config.Config) -> str | None:
    """Configs with equal keys can be batched together; None for one that cannot be batched at all."""
    if batchable([cfg]) is not None:
        return None
    return json.dumps({k: v for k, v in _flat(cfg).items() if not _differs_ok(k)}, sort_keys=True, default=str)


def groups(cfgs: list[config.Config], size: int) -> list[list[int]]:
    """Indices of ``cfgs`` in groups of at most ``size`` that :func:`batchable` accepts, in order of
    their smallest member; a config that cannot be batched is a group of its own.

    Configs with the same activation are grouped first: members with different activations cost a
    split and a concatenation of every layer's output, so they share a group only where that fills
    one that one activation leaves short (4 activations x 2 seeds of a 20x64 MLP: one group of 8
    trained 1.15x as fast as 4 groups of 2 with 2 threads, 1.06x with one;
    ``scripts/bench_batched.py --activation tanh,relu,gelu,sigmoid``)."""
    out: list[list[int]] = []
    if size <= 1:
        return [[i] for i in range(len(cfgs))]
    pure: dict = {}  # (key, activation) -> indices
    for i, cfg in enumerate(cfgs):
        key = group_key(cfg)
        if key is None:
            out.append([i])
        else:
            pure.setdefault((key, json.dumps(cfg.model.activation, sort_keys=True)), []).append(i)
    short: dict = {}  # key -> the members of groups that one activation leaves short
    for (key, act), idx in pure.items():
        chunks = [idx[j:j + size] for j in range(0, len(idx), size)]
        if len(chunks[-1]) < size:  # a recurrent net's members share their activation (StackedRecurrent)
            short.setdefault(key if cfgs[idx[0]].model.arch == "mlp" else (key, act), []).extend(chunks.pop())
        out += chunks
    for idx in short.values():
        out += [idx[j:j + size] for j in range(0, len(idx), size)]
    return sorted(out, key=min)


# -- the batched model ---------------------------------------------------------------------------

def _member_dims(t: torch.Tensor) -> tuple:
    return tuple(range(1, t.dim()))


def _norms(tensors: list[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """(P, K): the norm of each member's slice of each stacked tensor; summed in float32 (clipping and
    the divergence flag, as torch's clip_grad_norm_ sums alone) or in ``dtype`` float64 (what is
    recorded: exact at both ends, see vgp.record._norms)."""
    return torch.stack([torch.linalg.vector_norm(t, dim=_member_dims(t), dtype=dtype) for t in tensors])


@functools.lru_cache(maxsize=32)
def _row_plan(shapes: tuple) -> tuple:
    """For stacked tensors of these shapes (K, ...): which take rows (a weight's (K, out, in): rows of
    ``in``; a bias: one row per member) of at most ROW_MAX entries, their row lengths, and the
    entries of one member's slice of each."""
    per = [math.prod(sh[1:]) for sh in shapes]
    cols = [sh[-1] if len(sh) > 2 else n for sh, n in zip(shapes, per)]
    fast = [p for p, c in enumerate(cols) if 0 < c <= record.ROW_MAX]
    return fast, [cols[p] for p in fast], tuple(per[p] for p in fast)


SAFE_TOTAL = 2.0**63  # a float32 total norm below this: no member's float32 sum of squares overflowed


def _member_grad_norms(grads: list[torch.Tensor], k: int, each: bool) -> torch.Tensor:
    """(K,) each member's total gradient norm, summed in float32 as alone (the divergence flag;
    clipping by norm, with ``each``). Without ``each``, on the CPU, where only the flag is needed:
    the norm of all members together where it is finite and below :data:`SAFE_TOTAL`, since then
    every member's is finite and below it too (each member's sum of squares is part of the whole's);
    each member's own where not (a member diverging, or exploding beyond 2**63)."""
    if not each and grads[0].device.type == "cpu":  # reading the value back costs nothing on the CPU
        whole = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        if whole.item() < SAFE_TOTAL:
            return whole.expand(k)
    return torch.linalg.vector_norm(_norms(grads), dim=0)


def _exact_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """(P, K) float64: the norm of each member's slice of each stacked tensor, equal to the float64
    norm of its float32 entries, from 1e-45 to 3.4e38 (what is recorded), taken as
    :func:`vgp.record._norms` takes a solo run's: on the CPU, float32 norms of rows of at most
    ROW_MAX entries, combined in float64 and kept where they can be trusted, the rest summed again
    in float64; a plain float64 norm (a copy of the tensor, on the CPU) where rows do not apply."""
    k = tensors[0].shape[0]
    out = torch.full((len(tensors), k), math.nan, dtype=torch.float64, device=tensors[0].device)
    if all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors):
        fast, cols, numels = _row_plan(tuple(tuple(t.shape) for t in tensors))
        if fast:
            rows = [torch.linalg.vector_norm(tensors[p].view(k, -1, c), dim=2) for p, c in zip(fast, cols)]  # (K, R)
            out[fast] = record.combine_rows(rows, numels).T  # NaN where not trusted
    redo = out.isnan().any(1)
    if redo.any():  # vanishing or exploding members, tensors without rows, a GPU: float64 outright
        for p in redo.nonzero().flatten().tolist():
            out[p] = torch.linalg.vector_norm(tensors[p], dim=_member_dims(tensors[p]), dtype=torch.float64)
    return out


def _losses(out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """(K,) each member's mean loss, as :func:`vgp.train.loss_fn` computes it alone."""
    if task == "classification":  # (K, B) or, per step, (K, B, T) targets
        return F.cross_entropy(out.flatten(0, -2), y.flatten(), reduction="none").view(y.shape).mean(_member_dims(y))
    return F.mse_loss(out, y, reduction="none").mean(_member_dims(out))


def evaluate(net, x, y, task: str, chunk: int = 4096):
    """Each member's mean test loss and accuracy (None for regression), as :func:`vgp.train.evaluate`
    alone: lists of K floats. ``x``, ``y``: (K, N, ...) stacked, one set per member."""
    with torch.no_grad():
        return _evaluate(net, x, y, task, chunk)


def _evaluate(net, x, y, task: str, chunk: int):
    k = x.shape[0]
    total = torch.zeros(k, device=x.device, dtype=torch.float32)
    correct = torch.zeros(k, device=x.device, dtype=torch.float32)
    for i in range(0, x.shape[1], chunk):
        out = net(x[:, i:i + chunk])
        yy = y[:, i:i + chunk]
        if task == "classification":  # per example: the mean over its positions, for sequence outputs
            per = yy.shape[1] / yy[0].numel()
            losses = F.cross_entropy(out.flatten(0, -2), yy.flatten(), reduction="none").view(yy.shape)
            total += losses.flatten(1).sum(1) * per
            correct += (out.argmax(-1) == yy).float().flatten(1).sum(1) * per
        else:
            total += F.mse_loss(out, yy, reduction="none").sum(_member_dims(out)) / out.shape[-1]
    n = x.shape[1]
    loss = [v / n for v in total.tolist()]
    acc = [v / n for v in correct.tolist()] if task == "classification" else [None] * k
    return loss, acc


# -- running -------------------------------------------------------------------------------------

class _Member:
    """One member's run folder, its streams and how far it got."""

    def __init__(self, cfg, folder: Path):
        self.cfg, self.folder = cfg, folder
        self.streams: list = []
        self.finished = False  # summary.csv written
        self.status, self.diverged_step, self.grad_ratio, self.last_loss, self.done = "completed", None, None, None, 0
        self.train_s = 0.0


def run_batched(cfgs: list[config.Config], out: str | Path | None = None, force: bool = False, quiet: bool = True,
                lock: bool = True) -> list:
    """Train ``cfgs`` as one batched model, each into ``<out>/<name>/`` as :func:`vgp.train.run` would
    (``out`` None: each config's own ``out``). Raises UserError when :func:`batchable` says they cannot
    be, and as ``vgp.train.run`` does otherwise; every member's folder is marked how the group ended."""
    device = train.pick_device(cfgs[0].device) if cfgs else None
    why = batchable(cfgs, device)
    if why is not None:
        raise UserError(f"these {len(cfgs)} configs cannot be trained batched: {why}")
    from vgp import preflight

    for cfg in cfgs:
        preflight.check(cfg, f"config '{cfg.name}'", device=str(device))
    folders = [Path(out if out is not None else cfg.out) / cfg.name for cfg in cfgs]
    with contextlib.ExitStack() as stack:
        for folder in folders:
            if lock and not stack.enter_context(results.run_lock(folder)):
                raise UserError(f"{folder} is being written by another run; wait for it to end, or use --out")
        for folder in folders:
            results.prepare(folder, force)
        order = _by_activation(cfgs)
        with train._signals_as_exceptions():
            res = _run_in([_Member(cfgs[i], folders[i]) for i in order], device, quiet)
        return [r for _, r in sorted(zip(order, res), key=lambda pair: pair[0])]  # in the order of cfgs


def _by_activation(cfgs: list[config.Config]) -> list[int]:
    """Indices of ``cfgs`` with equal activation specs adjacent (in order of first appearance, the
    configs' own order within each): each activation then applies to one slice of the members."""
    first: dict = {}
    keys = [first.setdefault(json.dumps(c.model.activation, sort_keys=True), len(first)) for c in cfgs]
    return sorted(range(len(cfgs)), key=lambda i: keys[i])


def _activation_runs(cfgs: list[config.Config], acts: list) -> list[tuple[int, int, object]]:
    """(start, end, Activation) for each run of adjacent members with the same activation spec."""
    runs: list = []
    for i, cfg in enumerate(cfgs):
        if runs and cfgs[runs[-1][0]].model.activation == cfg.model.activation:
            runs[-1] = (runs[-1][0], i + 1, runs[-1][2])
        else:
            runs.append((i, i + 1, acts[i]))
    return runs


def _run_in(members: list[_Member], device, quiet: bool) -> list:
    # -- set-up: every member built as alone, then stacked ---------------------------------------
    from vgp.models import StackedMLP
    from vgp.models.rnn import StackedRecurrent

    started, t_start = results.now(), time.perf_counter()
    k = len(members)
    out: list = [None] * k
    try:
        for m in members:
            results.write_yaml(m.folder / "config.yaml", config.to_dict(m.cfg))
            results.write_json(m.folder / "meta.json", train._meta(device, started, "running", batched=k))
        datas, models, acts = [], [], []
        for m in members:
            torch.manual_seed(m.cfg.seed)
            d = datasets.load(m.cfg.data, m.cfg.seed)
            model, act = train.build_model(m.cfg.model, d, train.first_batch(d, m.cfg.train.batch_size, m.cfg.seed))
            datas.append(d)
            models.append(model)
            acts.append(act)
        runs = _activation_runs([m.cfg for m in members], acts)
        if members[0].cfg.model.arch == "mlp":
            net = StackedMLP(models, [(s, e) for s, e, _ in runs])
        else:
            net = StackedRecurrent(models)
        net = net.to(device).train()  # (K, out, in) weights
        x_train, y_train, x_test, y_test = (_stacked([getattr(d, n) for d in datas], device)
                                            for n in ("x_train", "y_train", "x_test", "y_test"))
        # member 0's recorder, never attached: the rows' layout (names, applicable kinds) of every member
        template = record.GradientRecorder(models[0].tracked(), acts[0], list(models[0].parameters()),
                                           members[0].cfg.log.kinds)
        for m in members:
            m.streams = [results.CsvStream(m.folder / "grad_norms.csv", train.GRAD_COLUMNS),
                         results.CsvStream(m.folder / "metrics.csv", train.METRIC_COLUMNS)]
            if hasattr(net, "hidden_sink"):  # recurrent: dLoss/dh_t per time step, as alone
                m.streams.append(results.CsvStream(m.folder / "time_grads.csv", train.TIME_COLUMNS))
        _train(members, net, runs, datas[0].task, (x_train, y_train, x_test, y_test), template, t_start, started,
               device, quiet, datas)
        return [train.RunResult(m.folder, m.status, m.summary) for m in members]
    except BaseException as e:
        for m in members:
            if not m.finished:
                train._record_end(m.folder, m.streams, e, device, started, quiet)
        raise


def _stacked(tensors: list[torch.Tensor], device) -> torch.Tensor:
    """(K, N, ...) on the device: the members' sets stacked, or one set seen K times where they are
    equal (a data set read from files does not depend on the seed: no K copies of it)."""
    first = tensors[0]
    if all(t.shape == first.shape and torch.equal(t, first) for t in tensors[1:]):
        first = first.to(device)
        return first.unsqueeze(0).expand(len(tensors), *first.shape)
    return torch.stack(tensors).to(device)


def _finish(m: _Member, k: int, data, device, started: str, t_start: float) -> None:
    """The member's CSVs get their final names, then its summary marks the folder finished."""
    for s in m.streams:
        s.finish()
    wall = time.perf_counter() - t_start
    outcome = {"status": m.status, "steps_done": m.done, "final_loss": m.last_loss,
               "final_test_loss": m.final_test_loss, "final_test_acc": m.final_test_acc, "grad_ratio": m.grad_ratio,
               "diverged_step": m.diverged_step, "skipped_steps": 0, "train_s": round(m.train_s, 3)}
    summary = {**config.flatten(config.to_dict(m.cfg)), **outcome, "wall_s": round(wall, 3), **data.info}
    summary.update(analysis.summary_columns(m.folder))
    results.write_json(m.folder / "meta.json", train._meta(device, started, summary["status"], ended=results.now(),
                                                           wall_s=summary["wall_s"], train_s=outcome["train_s"],
                                                           batched=k))
    results.atomic_write(m.folder / "summary.csv", results.csv_text([summary], list(summary)))
    m.summary = summary
    m.finished = True


def _optimizers(members, net):
    """One optimizer over the stacked tensors where every member's spec is the same, else one per
    member over views sharing their storage. Returns (optimizers, per-member views or None)."""
    params = list(net.parameters())
    specs = [m.cfg.train.optimizer for m in members]
    if all(s == specs[0] for s in specs):
        opt = OPTIMIZERS.build(specs[0], params)
        if params[0].device.type in FUSED.get(specs[0]["name"], ()):
            # torch's fused kernel: one pass over each stacked tensor per update instead of one per
            # operation; the same arithmetic, rounded alike to within each update's last bit
            takes = inspect.signature(type(opt)).parameters  # (AdamW's defaults hold a key it does not take)
            args = {k: v for k, v in opt.defaults.items() if k in takes}
            opt = type(opt)(params, **{**args, "fused": True, "foreach": False})
        else:  # one foreach call per operation over the few stacked tensors
            for group in opt.param_groups:
                if "foreach" in group:
                    group["foreach"] = True
        return [opt], None
    views = [[torch.nn.Parameter(p.data[i]) for p in params] for i in range(len(members))]
    return [OPTIMIZERS.build(s, v) for s, v in zip(specs, views)], views


def _train(members, net, runs, task, tensors, template, t_start, started, device, quiet, datas) -> None:
    """The loop of :func:`vgp.train._train`, for K members at once; ``runs``: (start, end, Activation)
    of the members' activations (:func:`_activation_runs`)."""
    x_train, y_train, x_test, y_test = tensors
    cfg = members[0].cfg
    k = len(members)
    clip, steps, every, eval_every = cfg.train.clip, cfg.train.steps, cfg.log.every, cfg.train.eval_every
    kinds = set(cfg.log.kinds)
    pairs = template.applicable()
    n_layers = len(template.names)
    flat_index = [KINDS.index(kd) * n_layers + i for kd, i in pairs]
    grad_prefixes = [f"{i + 1},{template.names[i]},{kd}" for kd, i in pairs]
    hidden = [i for i, t in enumerate(template.tracked) if t.output and t.act is not None]
    outputs = [i for i, t in enumerate(template.tracked) if t.output]  # output_grad: the taps' layers
    recurrent = record.HiddenGrads() if hasattr(net, "hidden_sink") else None  # dLoss/dh_t, per member
    time_keys: list = []
    params = list(net.parameters())
    weights, biases = list(net.weights), list(net.biases)
    opts, views = _optimizers(members, net)
    schedules = [SCHEDULES.build(cfg.train.schedule, o, steps) for o in opts]  # equal in every member
    lrs = lambda: [o.param_groups[0]["lr"] for o in opts] * (k if len(opts) == 1 else 1)  # noqa: E731
    iters = [train.batches(x_train.shape[1], cfg.train.batch_size, m.cfg.seed, device) for m in members]
    rows = torch.arange(k, device=device)[:, None]
    prev = [torch.empty_like(w) for w in weights]
    buffers: dict = {}  # the recorder's scratch tensors
    want_act = bool(kinds & {"act_mean", "act_std", "saturation", "dead"}) and hidden
    alive = list(range(k))
    pending: list[torch.Tensor] = []
    finite: list[torch.Tensor] = []
    nan = torch.full((k,), math.nan, device=device)
    for m in members:
        m.final_test_loss = m.final_test_acc = None

    t_loop = time.perf_counter()
    with train._progress(quiet, f"{cfg.name} (+{k - 1} batched)", steps) as progress:
        bar = progress.add_task(cfg.name, total=steps, loss="-")
        for step in range(steps):
            recording = step % every == 0 or step % eval_every == 0 or step == steps - 1
            test_loss = test_acc = None
            if step % eval_every == 0:
                test_loss, test_acc = evaluate(net, x_test, y_test, task)
            idx = torch.stack([next(it) for it in iters])  # (K, B)
            x, y = x_train[rows, idx], y_train[rows, idx]

            # step: forward, backward, clip, update
            taps: list | None = [] if recording else None
            out_grads: list = []
            if recording and recurrent is not None:
                net.hidden_sink = recurrent.sink
            logits = net(x, taps)
            if recording and "output_grad" in kinds:
                out_grads = [None] * n_layers
                for i, z in zip(outputs, taps[::2] if recurrent is None else taps):
                    z.register_hook(lambda g, i=i: out_grads.__setitem__(
                        i, torch.linalg.vector_norm(g, dim=(1, 2), dtype=torch.float64)))
            losses = _losses(logits, y, task)  # (K,)
            for o in opts:
                o.zero_grad(set_to_none=True)
            for p in params:
                p.grad = None
            losses.sum().backward()
            if recording and recurrent is not None:
                net.hidden_sink = None
            pending.append(losses.detach())
            grads = [p.grad for p in params]
            # (K,) before clipping, float32, as alone: what clipping by norm scales by, and the divergence
            # flag of a step that records nothing (a recorded step's flag: its float64 norm, as alone)
            gn = _member_grad_norms(grads, k, each=clip.mode == "norm") if not recording or clip.mode == "norm" \
                else None
            if recording:  # written: float64 norms
                norms64 = _exact_norms(grads)
                gn64 = torch.linalg.vector_norm(norms64, dim=0)
                values = _record(net, taps, out_grads, runs, kinds, weights, biases, prev, want_act, hidden, n_layers,
                                 params, norms64, device, buffers)
                if recurrent is not None:  # each member's norms, (P, K), as alone
                    time_keys, time_grads = recurrent.take(torch.zeros(k, 1, device=device))
                    time_values = _exact_norms(time_grads)
                clipped = torch.zeros(k, dtype=torch.bool, device=device)
                if clip.mode == "value":
                    amax = torch.stack([g.abs().amax(_member_dims(g)) for g in grads]).amax(0)
                    clipped = amax > clip.value
                elif clip.mode == "norm":
                    clipped = gn + 1e-6 > clip.max_norm
            flag_norm = gn if gn is not None else gn64
            finite.append((flag_norm <= train.FLOAT32_NORM_MAX) & torch.isfinite(pending[-1]))  # train.step_flags
            if clip.mode == "norm":  # torch.nn.utils.clip_grad_norm_, each member by its own norm
                coef = (clip.max_norm / (gn + 1e-6)).clamp(max=1.0)
                for g in grads:
                    g.mul_(coef.view(k, *[1] * (g.dim() - 1)))
            elif clip.mode == "value":
                torch.nn.utils.clip_grad_value_(params, clip.value)
            if views is not None:
                for i, vs in enumerate(views):
                    for v, g in zip(vs, grads):
                        v.grad = g[i]
            lr = lrs()  # what this update uses
            for o, sched in zip(opts, schedules):
                o.step()
                sched.step()
            for i in alive:
                members[i].done = step + 1
            if not recording:
                continue

            # record: one transfer, then each member's rows
            if "update_ratio" in kinds:
                torch._foreach_sub_(prev, [w.detach() for w in weights])
                values[:, KINDS.index("update_ratio")] = _exact_norms(prev).T / values[:, KINDS.index("weight")]
            gnc = torch.linalg.vector_norm(_exact_norms(grads), dim=0) if clip.mode != "none" else gn64
            acc = (logits.detach().argmax(-1) == y).float().flatten(1).mean(1) if task == "classification" else nan
            scalars = torch.stack([losses.detach().double(), acc.double(), gn64, gnc, clipped.double()], 1)  # (K, 5)
            n_pending = len(pending)
            parts = [values.flatten(1), scalars.double(), torch.stack(pending, 1).double(),
                     torch.stack(finite, 1).double()]
            if recurrent is not None:
                parts.append(time_values.T)
            host = torch.cat(parts, 1).tolist()
            pending.clear()
            finite.clear()
            elapsed = time.perf_counter() - t_loop
            nv = values[0].numel()
            by_member = {i: host[i] for i in alive}
            with results.signals_held():  # the step's rows reach every member's two CSVs, or none of them
                for i, row in by_member.items():
                    tl = test_loss[i] if test_loss is not None else None
                    ta = test_acc[i] if test_acc is not None else None
                    (l, a, g, gc, c), (grad_csv, metrics_csv) = row[nv:nv + 5], members[i].streams[:2]
                    grad_csv.write_values(step, grad_prefixes, [row[j] for j in flat_index])
                    if recurrent is not None:
                        members[i].streams[2].write_values(step, [f"{ly},{t}" for ly, t in time_keys],
                                                           row[len(row) - len(time_keys):])
                    metrics_csv.write([[step, l, None if math.isnan(a) else a, g, gc, bool(c), lr[i],
                                        round(elapsed, 4), tl, ta, 1.0, 0]])  # fp32: no loss scale, no skips
                for i in by_member:
                    for s in members[i].streams:
                        s.flush()
            for i, row in by_member.items():
                m, l = members[i], row[nv]
                ok = row[nv + 5 + n_pending:nv + 5 + 2 * n_pending]
                if step == 0 and "output_grad" in kinds and hidden:
                    m.grad_ratio = template.output_grad_ratio(row[:nv], hidden)
                m.last_loss = l
                bad = [j for j, v in enumerate(ok) if v != 1.0]
                if bad:
                    m.diverged_step = step - n_pending + 1 + bad[0]
                elif test_loss is not None and not math.isfinite(test_loss[i]):
                    m.diverged_step = step
                if m.diverged_step is not None:
                    m.status = "diverged"
                    m.train_s = time.perf_counter() - t_loop
                    alive.remove(i)
                    _finish(m, k, datas[i], device, started, t_start)
            progress.update(bar, completed=step + 1, loss=f"{members[alive[0]].last_loss:.4g}" if alive else "-")
            if not alive:
                break
    train_s = time.perf_counter() - t_loop

    # -- final evaluation, after the last update ----------------------------------------------------
    if alive:
        final_loss, final_acc = evaluate(net, x_test, y_test, task)
        lr = lrs()
        for i in alive:
            m = members[i]
            m.final_test_loss, m.final_test_acc = final_loss[i], final_acc[i]
            m.streams[1].write([[steps, None, None, None, None, None, lr[i], round(time.perf_counter() - t_loop, 4),
                                 m.final_test_loss, m.final_test_acc, None, None]])
            if not math.isfinite(m.final_test_loss):
                m.status, m.diverged_step = "diverged", steps
            m.train_s = train_s
        for i in alive:
            _finish(members[i], k, datas[i], device, started, t_start)


def _underflow(grads: list, buffers: dict) -> torch.Tensor:
    """(K, L) float64: each member's fraction of each stacked (K, out, in) weight gradient's entries below
    float32's smallest normal number (zeros and subnormals), counted as the recorder does alone
    (:func:`vgp.record.count_below`; fp32: the loss scale is 1)."""
    largest = max(g.numel() for g in grads)
    if buffers.get("underflow") is None or buffers["underflow"].numel() < largest:
        buffers["underflow"] = torch.empty(largest, device=grads[0].device)
    tiny = torch.finfo(torch.float32).tiny
    return torch.stack([record.count_below(g, tiny, buffers["underflow"], _member_dims(g)).double() / g[0].numel()
                        for g in grads], 1)


def _record(net, taps, out_grads, runs, kinds, weights, biases, prev, want_act, hidden, n_layers, params, norms,
            device, buffers: dict) -> torch.Tensor:
    """The recorder's (len(KINDS), L) values for every member: a (K, len(KINDS), L) float64 tensor,
    NaN where not applicable (update_ratio is added after the step). ``runs``: (start, end, Activation) of
    the members' activations. ``buffers``: kept between calls."""
    k = weights[0].shape[0]
    values = torch.full((k, len(KINDS), n_layers), math.nan, dtype=torch.float64, device=device)
    row = {kd: j for j, kd in enumerate(KINDS)}
    pos = {id(p): j for j, p in enumerate(params)}
    values[:, row["weight_grad"]] = norms[[pos[id(w)] for w in weights]].T
    values[:, row["bias_grad"]] = norms[[pos[id(b)] for b in biases]].T
    if "output_grad" in kinds:
        zero = torch.zeros(k, dtype=torch.float64, device=device)
        values[:, row["output_grad"]] = torch.stack([g if g is not None else zero for g in out_grads]).T
    if "update_ratio" in kinds or "weight" in kinds:
        values[:, row["weight"]] = _exact_norms([w.detach() for w in weights]).T
    if "update_ratio" in kinds:
        torch._foreach_copy_(prev, [w.detach() for w in weights])
    if "underflow" in kinds:
        values[:, row["underflow"]] = _underflow([w.grad for w in weights], buffers)
    if want_act:
        lh, (_, u, b) = len(hidden), taps[1].shape  # taps: (K, U, B), see StackedMLP
        if buffers.get("shape") != (k, lh, b, u):  # reused: a fresh multi-megabyte tensor costs page faults
            buffers.update(shape=(k, lh, b, u), h=torch.empty(k, lh, b, u, device=device),
                           tmp=torch.empty(k, lh, b, u, device=device))
        h, tmp = buffers["h"], buffers["tmp"]  # (K, Lh, B, U): a run of members is one contiguous slice
        torch.stack([taps[2 * i + 1].detach().transpose(1, 2) for i in hidden], dim=1, out=h)
        if any(act.saturated is None for _, _, act in runs):
            torch.stack([taps[2 * i].detach().transpose(1, 2) for i in hidden], dim=1, out=tmp)
        first = row["act_mean"]
        for s, e, act in runs:
            n = (e - s) * lh
            stats = record.act_stats(act, h[s:e].view(n, b, u), tmp[s:e].view(n, b, u))  # (4, (e - s) Lh)
            values[s:e, first:first + 4, hidden] = stats.view(4, e - s, lh).transpose(0, 1)
    return values
