"""``vgp.Recorder``: record any PyTorch model in your own training loop into a vgp run folder.

::

    with vgp.Recorder(model, out="results/mynet", every=10) as rec:
        for step, (x, y) in enumerate(loader):
            loss = loss_fn(model(x), y)
            opt.zero_grad(); loss.backward()
            rec.step(loss)       # gradients as computed: before clipping and the optimizer step
            clip_grad_norm_(model.parameters(), 1.0); opt.step()

**Tracked layers**: every module with a trainable ``weight`` Parameter of its own (Linear, convs,
Embedding, norm layers' affine weights, Hugging Face's ``Conv1D``, ...) that runs in the first
recorded forward pass, numbered in the order they first run (1 = first); names are
``model.named_modules()`` names, filtered by ``include``/``exclude`` (fnmatch patterns). A layer
whose output goes straight into an activation module vgp knows (nn.ReLU, Tanh, Sigmoid, GELU,
SiLU, ELU, LeakyReLU, SELU, Softsign, Softplus) also gets activation statistics of that output.

**Steps**: the k-th ``step()`` call is step k; steps 0, every, 2*every, ... are recorded. Hooks are
attached only for recorded steps (before their forward pass: at ``__enter__`` for step 0, at the
end of the ``step()`` before the next recorded one); a recorded step's values stay on the device
until the next ``step()`` call (or the exit), when the optimizer's update is visible (update_ratio),
and then leave it in one transfer. Other ``step()`` calls count and keep a device-side
finiteness flag of the loss: the first non-finite loss ends recording and the run is ``diverged``.

**A layer called several times per forward pass** (weight sharing, an unrolled recurrence): one
row per kind still; weight_grad is the norm of the accumulated gradient, output_grad the norm
over all calls' output gradients together (sqrt of the sum of their squares), activation
statistics those of its last call.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import time
from pathlib import Path

import torch
from torch import nn

from vgp import activations, analysis, results
from vgp.errors import UserError
from vgp.models import Tracked
from vgp.record import KINDS, GradientRecorder, _unchanged, norm
from vgp.train import GRAD_COLUMNS, METRIC_COLUMNS, PRECISIONS, _meta, _record_end, _signals_as_exceptions

# activation modules vgp can describe: class -> (registry name, {argument: module attribute})
KNOWN_ACTIVATIONS = {
    nn.ReLU: ("relu", {}), nn.Tanh: ("tanh", {}), nn.Sigmoid: ("sigmoid", {}), nn.SiLU: ("silu", {}),
    nn.ELU: ("elu", {"alpha": "alpha"}), nn.LeakyReLU: ("leaky_relu", {"negative_slope": "negative_slope"}),
    nn.SELU: ("selu", {}), nn.Softsign: ("softsign", {}), nn.GELU: ("gelu", {}), nn.Softplus: ("softplus", {}),
}


def describe_activation(module: nn.Module) -> dict | None:
    """The registry spec of an activation module, or None where vgp cannot describe it exactly
    (GELU's tanh approximation, Softplus with beta != 1, anything else)."""
    known = KNOWN_ACTIVATIONS.get(type(module))
    if known is None:
        return None
    if isinstance(module, nn.GELU) and module.approximate != "none":
        return None
    if isinstance(module, nn.Softplus) and (module.beta != 1 or module.threshold < 20):
        return None
    name, args = known
    return {"name": name, **{a: float(getattr(module, attr)) for a, attr in args.items()}}


def _own_weight(module: nn.Module) -> bool:
    w = module._parameters.get("weight")
    return isinstance(w, nn.Parameter) and w.requires_grad


class _Discovery:
    """Forward hooks for the first recorded step: which candidate layers run, in which order, which
    known activation module is applied to each one's output; they also take what that step's
    record needs (output-gradient norms, the activations), as GradientRecorder's hooks would."""

    def __init__(self, candidates: list[tuple[str, nn.Module]], model: nn.Module, want_z: bool, want_act: bool):
        self.order: list[int] = []  # candidate indices, first call first
        self.out_grads: dict[int, torch.Tensor] = {}
        self.acts: dict[int, tuple[nn.Module, torch.Tensor, torch.Tensor]] = {}  # cand -> (module, z, h)
        self._outs: dict[int, tuple[int, torch.Tensor]] = {}  # id(output) -> (cand, output)
        self._hooks = [m.register_forward_hook(self._layer_hook(c, want_z)) for c, (_, m) in enumerate(candidates)]
        if want_act:
            self._hooks += [m.register_forward_hook(self._act_hook) for m in model.modules()
                            if describe_activation(m) is not None]

    def _layer_hook(self, c: int, want_z: bool):
        def add(g):
            n, prev = norm(g), self.out_grads.get(c)  # float64, as GradientRecorder's hooks take it
            self.out_grads[c] = n if prev is None else torch.hypot(prev, n)

        def hook(module, inputs, output):
            if c not in self.order:
                self.order.append(c)
            if isinstance(output, torch.Tensor):
                self._outs[id(output)] = (c, (output, output._version))
                if want_z and output.requires_grad:
                    output.register_hook(add)

        return hook

    def _act_hook(self, module, inputs, output):
        found = self._outs.get(id(inputs[0])) if inputs else None
        if found is not None and _unchanged(found[1], inputs[0], module):
            c = found[0]
            if c not in self.acts or self.acts[c][0] is module:  # the first module applied to c's output
                self.acts[c] = (module, inputs[0].detach(), output.detach())

    def remove(self):
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._outs.clear()


class Recorder:
    def __init__(self, model: nn.Module, out: str | Path, every: int = 10, *, include=None, exclude=None,
                 kinds=KINDS, force: bool = False, optimizer=None, seed: int | None = None, name: str | None = None,
                 quiet: bool = True, precision: str = "fp32"):
        """Record ``model`` into the run folder ``out`` (refused if it holds a finished run, unless
        ``force``). ``every``: record steps 0, every, 2*every, ... ``include``/``exclude``: fnmatch
        patterns (a string or a list) on module names, e.g. ``"transformer.h.*.mlp.*"``; exclude wins.
        ``kinds``: what to record per layer (vgp.record.KINDS). ``optimizer``: its first group's lr
        goes into metrics.csv. ``seed``: written into summary.csv (vgp does not seed anything).
        ``name``: the run's name in summary.csv (default: the folder's name). ``precision``: the
        autocast precision of the backward pass, fp32, bf16 or fp16 (vgp run's ``train.precision``),
        whose smallest normal number ``underflow`` compares with (fp16's is 6.1e-5, float32's and
        bfloat16's 1.2e-38)."""
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise UserError(f"Recorder: every must be a positive integer, not {every!r}")
        if precision not in PRECISIONS:
            raise UserError(f"Recorder: precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        self.dtype = PRECISIONS[precision]
        bad = [k for k in kinds if k not in KINDS]
        if bad:
            raise UserError(f"Recorder: unknown kind {bad[0]!r}; kinds are {', '.join(KINDS)}")
        include = [include] if isinstance(include, str) else list(include or ["*"])
        exclude = [exclude] if isinstance(exclude, str) else list(exclude or [])
        self.model, self.folder, self.every, self.force = model, Path(out), every, force
        self.kinds = [k for k in KINDS if k in kinds]
        self.optimizer, self.seed, self.quiet = optimizer, seed, quiet
        self.name = name or self.folder.name
        self.candidates = [(n, m) for n, m in model.named_modules() if _own_weight(m)
                           and any(fnmatch.fnmatchcase(n, p) for p in include)
                           and not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
        if not self.candidates:
            what = " matching include/exclude" if include != ["*"] or exclude else ""
            raise UserError(f"Recorder: {type(model).__name__} has no module with a trainable weight of its "
                            f"own{what}; nothing to record")
        self.device = self.candidates[0][1].weight.device
        self.steps_done = 0
        self.tracked: list[Tracked] = []  # after the first recorded step, in execution order
        self.activations: list = []  # per tracked layer: its Activation or None
        self._rec: GradientRecorder | None = None
        self._discovery: _Discovery | None = None
        self._finite: list[torch.Tensor] = []  # per step since the last transfer: loss finite
        self._true = torch.ones((), dtype=torch.bool, device=self.device)  # the flag of a step without a loss
        self._waiting: tuple | None = None  # a recorded step whose update is not seen yet
        self._stack: contextlib.ExitStack | None = None
        self._streams: list = []
        self.status, self.diverged_step, self.final_loss, self.grad_ratio = None, None, None, None

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self):
        stack = contextlib.ExitStack()
        try:
            if not stack.enter_context(results.run_lock(self.folder)):
                raise UserError(f"{self.folder} is being written by another run; give this one another out")
            results.prepare(self.folder, self.force)
            stack.enter_context(_signals_as_exceptions())  # SIGTERM/SIGHUP -> interrupted, if not handled
            self.started, self._t0 = results.now(), time.perf_counter()
            results.write_json(self.folder / "meta.json", _meta(self.device, self.started, "running"))
            results.atomic_write(self.folder / "model.txt", repr(self.model) + "\n")
            self._grad_csv = results.CsvStream(self.folder / "grad_norms.csv", GRAD_COLUMNS)
            self._metrics_csv = results.CsvStream(self.folder / "metrics.csv", METRIC_COLUMNS)
            self._streams = [self._grad_csv, self._metrics_csv]
            self._discovery = _Discovery(self.candidates, self.model, "output_grad" in self.kinds,
                                         bool(set(self.kinds) & {"act_mean", "act_std", "saturation", "dead"}))
        except BaseException:
            for s in self._streams:
                s.close()
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self._detach()
            if exc is None:
                try:
                    self._finish()
                except BaseException as e:
                    _record_end(self.folder, self._streams, e, self.device, self.started, self.quiet)
                    raise
            else:
                _record_end(self.folder, self._streams, exc, self.device, self.started, self.quiet)
        finally:
            self._stack.close()
        return False

    def _detach(self):
        if self._discovery is not None:
            self._discovery.remove()
        if self._rec is not None:
            self._rec._detach()

    def recording(self, step: int) -> bool:
        return step % self.every == 0 and self.diverged_step is None

    # -- a step ----------------------------------------------------------------------------------
    def step(self, loss=None, scale=None) -> None:
        """Mark the end of step k's backward pass (call it before clipping and ``optimizer.step()``).
        ``loss``: the step's loss (a tensor or a number), for metrics.csv and divergence.

        ``scale``: with mixed precision, the loss scale S of this step's backward pass (a positive
        number or 0-d tensor: ``scaler.get_scale()`` of a ``torch.amp.GradScaler``), once the
        parameters' gradients are unscaled (``scaler.unscale_(optimizer)`` before this call). The
        output gradients the hooks saw during the backward pass are S times the true ones: they are
        divided by S, and ``underflow`` compares |g| S with the smallest normal number of the
        recorder's ``precision``, where the backward pass ran. Raises UserError for a scale that is
        not a positive finite number."""
        if scale is not None and not isinstance(scale, torch.Tensor):
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
                raise UserError(f"Recorder.step: scale must be a positive finite number (the loss scale), "
                                f"not {scale!r}")
        k = self.steps_done
        if self.diverged_step is not None:
            self.steps_done += 1
            return
        if isinstance(loss, torch.Tensor):
            loss = loss.detach()
            if loss.numel() != 1:
                raise UserError(f"Recorder.step: loss must be a single number, not a tensor of shape "
                                f"{tuple(loss.shape)}")
            loss = loss.reshape(())
        elif loss is not None:
            loss = torch.tensor(float(loss), device=self.device)
        self._finite.append(torch.isfinite(loss) if loss is not None else self._true)  # one flag per step
        if self._waiting is not None:  # the step after a recorded one: its update is visible now
            self._write(self._waiting, self._finite[:-1], k)
            self._finite, self._waiting = self._finite[-1:], None
            if self.diverged_step is not None:
                self._rec._detach()
                self.steps_done += 1
                return
        if k % self.every:
            self.steps_done += 1
            if self.recording(self.steps_done):
                self._rec.start()  # hooks for the next step's forward pass
            return
        if scale is not None:
            scale = torch.as_tensor(scale, dtype=torch.float32, device=self.device).detach().reshape(())
        if self._rec is None:
            self._discover(scale)
        else:
            self._check_grads()
            self._rec.after_backward(scale)
        elapsed = time.perf_counter() - self._t0
        lr = self.optimizer.param_groups[0]["lr"] if self.optimizer is not None else None
        self._waiting = (k, loss, self._rec.total_grad_norm, elapsed, lr)
        self.steps_done += 1
        if self.recording(self.steps_done):
            self._rec.start()

    def _check_grads(self):
        if all(t.layer.weight.grad is None for t in self.tracked):
            raise UserError("Recorder.step: no tracked weight has a gradient; call loss.backward() before "
                            "rec.step()")

    def _discover(self, scale) -> None:
        """The first recorded step: fix the tracked layers and their activations, then take this
        step's record from what the discovery hooks saw (``scale``: the step's loss scale, or None)."""
        d = self._discovery
        d.remove()
        if not d.order:
            raise UserError("Recorder.step: no tracked module ran between entering the recorder and step(); "
                            "run the forward pass inside the with block")
        cache: dict[str, activations.Activation] = {}  # one Activation per kind: layers group by it
        self.tracked, self.activations = [], []
        for c in d.order:
            name, module = self.candidates[c]
            act_module = d.acts.get(c, (None,))[0]
            spec = describe_activation(act_module) if act_module is not None else None
            act = None
            if spec is not None:
                key = repr(sorted(spec.items()))
                act = cache[key] = cache.get(key) or activations.get(spec)
            self.tracked.append(Tracked(name, module, act_module if act is not None else None))
            self.activations.append(act)
        self._check_grads()
        params = [p for p in self.model.parameters() if p.requires_grad]
        rec = GradientRecorder(self.tracked, self.activations, params, self.kinds, match_act=True, dtype=self.dtype)
        n = len(self.tracked)
        rec._out_grads = [d.out_grads.get(c) for c in d.order]
        rec._act_in, rec._act_out, rec._outs = [None] * n, [None] * n, [None] * n
        for j, c in enumerate(d.order):
            if self.activations[j] is not None:
                _, rec._act_in[j], rec._act_out[j] = d.acts[c]
        rec.after_backward(scale)
        self._rec, self._discovery = rec, None
        self._pairs = rec.applicable()
        self._flat_index = [KINDS.index(kd) * n + i for kd, i in self._pairs]
        self._prefixes = [f"{i + 1},{rec.names[i]},{kd}" for kd, i in self._pairs]
        results.atomic_write(self.folder / "model.txt", repr(self.model) + "\n\n" + self.layer_table())

    def layer_table(self) -> str:
        """The tracked layers: index, name, type, weight shape, activation."""
        rows = [("layer", "name", "type", "shape", "activation")]
        for i, (t, a) in enumerate(zip(self.tracked, self.activations)):
            rows.append((str(i + 1), t.name, type(t.layer).__name__, "x".join(map(str, t.layer.weight.shape)),
                         a.name if a is not None else "-"))
        widths = [max(len(r[j]) for r in rows) for j in range(5)]
        return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n" for r in rows)

    def _write(self, waiting: tuple, finite: list, end: int) -> None:
        """Write a recorded step's rows: its values and the finiteness flags of steps
        end - len(finite) .. end - 1 leave the device in one transfer."""
        k, loss, gn, elapsed, lr = waiting
        values = self._rec.after_step()  # update_ratio: the optimizer has stepped since
        nan = torch.full((), math.nan, device=values.device, dtype=torch.float64)
        scalars = torch.stack([loss.double().reshape(()).to(values.device) if loss is not None else nan, gn.double()])
        flags = torch.stack(finite).double().to(values.device) if finite else values.new_empty(0)
        host = torch.cat([values.flatten(), scalars, flags]).tolist()
        nv = values.numel()
        flat, (l, g), ok = host[:nv], host[nv:nv + 2], host[nv + 2:]
        with results.signals_held():  # the step's rows reach both CSVs or neither
            self._grad_csv.write_values(k, self._prefixes, [flat[j] for j in self._flat_index])
            self._metrics_csv.write([[k, None if loss is None else l, None, g, None, None, lr, round(elapsed, 4),
                                      None, None, None, None]])
            for s in self._streams:
                s.flush()
        if loss is not None:
            self.final_loss = l
        if k == 0 and "output_grad" in self.kinds:
            self.grad_ratio = self._ratio(flat)
        self._check_flags(ok, end)

    def _check_flags(self, ok: list[float], end: int) -> None:
        bad = [j for j, v in enumerate(ok) if v != 1.0]
        if bad:  # ok[j] is the flag of step end - len(ok) + j
            self.diverged_step = end - len(ok) + bad[0]

    def _ratio(self, flat: list[float]) -> float | None:
        """output_grad of the first over the last layer with an activation (of the first over the last
        tracked layer where none has one), at step 0."""
        idx = [i for i, a in enumerate(self.activations) if a is not None] or list(range(len(self.tracked)))
        return self._rec.output_grad_ratio(flat, idx) if len(idx) >= 2 else None

    # -- the end -------------------------------------------------------------------------------
    def _finish(self) -> None:
        if self._waiting is not None and self.diverged_step is None:
            self._write(self._waiting, self._finite, self.steps_done)
        elif self._finite and self.diverged_step is None:  # steps since the last transfer
            self._check_flags(torch.stack(self._finite).double().tolist(), self.steps_done)
        for s in self._streams:
            s.finish()
        self.status = "diverged" if self.diverged_step is not None else "completed"
        wall = round(time.perf_counter() - self._t0, 3)
        summary = {"name": self.name, "model.class": type(self.model).__name__,
                   "model.params": sum(p.numel() for p in self.model.parameters()), "log.every": self.every,
                   **({"seed": self.seed} if self.seed is not None else {}),
                   "status": self.status, "steps_done": self.steps_done, "final_loss": self.final_loss,
                   "grad_ratio": self.grad_ratio, "diverged_step": self.diverged_step, "wall_s": wall}
        summary.update(analysis.summary_columns(self.folder))
        results.write_json(self.folder / "meta.json", _meta(self.device, self.started, self.status,
                                                            ended=results.now(), wall_s=wall))
        results.atomic_write(self.folder / "summary.csv", results.csv_text([summary], list(summary)))
        self.summary = summary
