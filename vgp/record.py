"""The gradient recorder: per-layer gradient norms and activation statistics, kept on the device.

Life of a recorded step::

    with GradientRecorder(model.tracked(), act) as rec:   # removes every hook on exit
        rec.start()                  # attach forward hooks for this step only
        loss = loss_fn(model(x), y)
        loss.backward()              # tensor hooks take ||dLoss/dz_l|| on the device (no sync)
        rec.after_backward()         # norms of grads (pre-clip), activation stats, weight copy
        ...clip, optimizer.step()...
        values = rec.after_step()    # (len(KINDS), L) tensor on the device: update ratios added

Nothing is hooked on steps that are not recorded, so those run at the speed of a bare loop.
The gradient hooks take each layer's output-gradient norm as the gradient arrives (keeping the
norm, not the gradient, lets the allocator reuse its memory during the backward pass); other
norms of many tensors are taken with one ``torch._foreach_norm`` call; activation statistics
of equally shaped layers in one stacked op; saturation is read off the activation's output
where its derivative allows, with comparisons written into a float buffer
(see ``activations.compare``). The statistics must stay right where vgp looks: in vanishing
layers (activations of 1e-24, or subnormal ones below 1.2e-38) and in saturated ones (a
sigmoid's 0.99 +- 1e-4), see ``_mean_std``; the values are float64, as a std can be far below
float32's range.
The caller converts the result to Python once per recorded step (one host synchronisation).
"""

from __future__ import annotations

import functools
import math

import torch

from vgp.activations import SAT as SATURATION, Activation
from vgp.config import KINDS  # weight_grad, bias_grad, output_grad, weight, update_ratio, act_*, underflow
from vgp.models import Tracked

ACT_KINDS = ("act_mean", "act_std", "saturation", "dead")
WEIGHT_KINDS = ("weight_grad", "bias_grad", "weight", "update_ratio", "underflow")  # not for a residual stream


ROW_MAX = 4096  # entries in a row whose squares the CPU sums in float32 (drift < 7e-7 relative, measured)
FLOAT32_MAX = torch.finfo(torch.float32).max


def _rows(t: torch.Tensor) -> torch.Tensor | None:
    """``t`` as (rows, at most ROW_MAX) where its float32 norm may be taken row by row: on the CPU
    only, float32 and contiguous; else None (the norm is taken in float64)."""
    if t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous() or t.numel() == 0:
        return None
    c = t.numel() // t.shape[0] if t.dim() > 1 else t.numel()  # a weight's row, an example's features
    if c > ROW_MAX and t.dim() > 1:
        c = t.shape[-1]
    return t.view(-1, c) if 0 < c <= ROW_MAX else None


def _trusted(n: float, numel: int) -> bool:
    """Whether a norm ``n`` of ``numel`` entries from float32 row sums is their float64 norm to within
    the rows' drift: finite (no square overflowed; NaN: no), and at least sqrt(numel) 2**-59, so that
    what squares below float32's normal range lost (under 2**-150 each, twice) is below 2**-30 of it."""
    return math.sqrt(numel) * 2.0**-59 <= n <= FLOAT32_MAX


@functools.lru_cache(maxsize=64)
def _segments(sizes: tuple) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


@functools.lru_cache(maxsize=64)
def _floors(numels: tuple) -> torch.Tensor:
    """(N,) float64: the smallest norm :func:`_trusted` accepts for tensors of these sizes."""
    return torch.tensor([math.sqrt(n) * 2.0**-59 for n in numels], dtype=torch.float64)


SMALL = 4096  # tensors of at most this many entries (biases) are summed in float64 outright


def combine_rows(per_row: list[torch.Tensor], numels: tuple) -> torch.Tensor:
    """Norms of P tensors from the float32 norms of their rows: ``per_row[p]`` (..., R_p), rows on
    the last dim (leading dims: a batched model's members). Squares summed in float64; (..., P)
    float64, NaN where the result is not :func:`_trusted` for a tensor of ``numels[p]`` entries
    (vanishing or exploding: to be summed again in float64 by the caller)."""
    sq = torch.cat(per_row, -1).double().square_()
    n = sq.new_zeros(*sq.shape[:-1], len(per_row))
    n.index_add_(-1, _segments(tuple(r.shape[-1] for r in per_row)), sq).sqrt_()
    return torch.where((n >= _floors(numels)) & (n <= FLOAT32_MAX), n, math.nan)


def _norms(tensors: list) -> torch.Tensor:
    """Frobenius norms, as a (N,) float64 tensor, each equal to the float64 norm of its tensor.

    PyTorch sums the squares in the tensor's dtype, unscaled: in float32 those of entries below
    about 1e-19 underflow (64 entries of 1e-23 get the norm 0 instead of 8e-23, gradients of 1e-30
    get 0), those above 1.8e19 overflow to inf, and on the CPU one long chain of sums drifts (1e-6
    relative at 262144 random entries, 3e-5 at 65536 equal ones). Summed in float64, none of that
    happens: a float32 number's square is exact in float64, subnormals included, so the norm is the
    float64 norm of the float32 tensor from 1e-45 to 3.4e38 (tests/test_norm_extremes.py).

    But on the CPU torch first copies a tensor to float64 for that: a recorded step of a 20x256
    MLP (one thread, 11 ms bare step) took 3.5 ms longer than with float32 norms for the gradient
    kinds, 5.7-6.6 ms for all kinds. So on the CPU, where reading a value waits for nothing, small
    float32 tensors (biases: at most SMALL entries) are concatenated and summed in float64 in one
    go, and the others' norms are taken row by row in float32 (rows of at most ROW_MAX: short
    chains), the rows combined in float64, and kept where :func:`_trusted`; only the rest
    (vanishing or exploding tensors) are summed again in float64, which costs what float64 costs
    where every layer vanishes. On a GPU all are summed in float64, in one fused call, with no host
    synchronisation."""
    if not tensors:
        return torch.zeros(0, dtype=torch.float64)
    if tensors[0].device.type != "cpu":
        return torch.stack(torch._foreach_norm(tensors, dtype=torch.float64))
    rows = [_rows(t) for t in tensors]
    small = [k for k, r in enumerate(rows) if r is not None and r.numel() <= SMALL]
    large = [k for k, r in enumerate(rows) if r is not None and r.numel() > SMALL]
    out = torch.full((len(tensors),), math.nan, dtype=torch.float64)
    if small:  # exact: float64 squares of float32 numbers, one chain per tensor of few entries
        sq = torch.cat([rows[k].view(-1) for k in small]).double().square_()
        n = sq.new_zeros(len(small)).index_add_(0, _segments(tuple(rows[k].numel() for k in small)), sq)
        out[small] = n.sqrt_()
    if large:
        per_row = [torch.linalg.vector_norm(rows[k], dim=1) for k in large]  # float32
        out[large] = combine_rows(per_row, tuple(tensors[k].numel() for k in large))
    redo = out.isnan()
    if redo.any():  # a Python bool: on the CPU the values are there, nothing waits
        slow = redo.nonzero().flatten().tolist()
        out[slow] = torch.stack(torch._foreach_norm([tensors[k] for k in slow], dtype=torch.float64))
    return out


def norm(g: torch.Tensor) -> torch.Tensor:
    """The Frobenius norm of one tensor (of any floating dtype: under autocast, float16 or bfloat16),
    as a float64 0-d tensor, taken as :func:`_norms` takes it."""
    rows = _rows(g)
    if rows is not None:
        n = torch.linalg.vector_norm(torch.linalg.vector_norm(rows, dim=1), dtype=torch.float64)
        if _trusted(n.item(), g.numel()):  # on the CPU: no synchronisation, the value is there
            return n
    return torch.linalg.vector_norm(g, dtype=torch.float64)


def _mean_std(h: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """Mean and population std over dims 1 and 2 of h (G, B, U) float32, as float64 (G,) tensors;
    h is overwritten (one pass fewer than a copy).

    Right to float32 rounding for any values: tiny ones (squares of numbers below 1e-19
    underflow in float32, and a std of subnormal activations is below float32's range) and nearly
    constant ones (for a saturated sigmoid's 0.99 +- 1e-4, E[h^2] - mean^2 cancels to noise).
    Each layer is scaled by a power of two, which is exact, so that its largest |h| lies in
    [0.5, 1); then centred on its mean, and the mean of what is left corrects the rounded mean
    (the corrected two-pass algorithm of Chan, Golub and LeVeque; for a layer of equal entries the
    two cancel exactly, std 0). ``lo``, ``hi``: (G, U) minimum and maximum over the batch.
    """
    count = h.shape[1] * h.shape[2]
    smallest, largest = lo.amin(1), hi.amax(1)  # (G,)
    exp = torch.frexp(torch.maximum(largest, smallest.neg())).exponent.clamp_(-126, 126)
    scale = ((127 - exp) << 23).view(torch.float32)  # the bits of 2**-exp, a normal float32
    x = h.mul_(scale[:, None, None])  # largest |x| in [0.5, 1) (at least 2**-23 if subnormal, below 4)
    m = x.sum((1, 2)).div_(count)
    x.sub_(m[:, None, None])
    rest = x.sum((1, 2))  # count times what the rounded m missed
    # a sum of squares, not vector_norm: on the CPU that adds in one float32 chain (2e-5 off at 1M
    # entries, 5e-4 at 8M), where sum adds pairwise
    sq = x.square_().sum((1, 2))
    m64, rest, sq, s = torch.stack([m, rest, sq, scale]).double().unbind()  # (G,) each
    rest = rest / count
    mean = torch.where(m.isinf(), m64, (m64 + rest) / s)  # an overflowed layer's is +-inf, not NaN
    std = (sq / count - rest * rest).clamp_(min=0).sqrt_() / s
    return mean, std


def count_below(g: torch.Tensor, thr, scratch: torch.Tensor, dims: tuple | None = None) -> torch.Tensor:
    """How many entries of ``g`` have |g| < ``thr`` (over ``dims``; None: all), exactly. |g| and then the
    comparison are written as 0./1. into ``scratch`` (a reused float buffer of at least g.numel()
    entries; a boolean result and its count cost 3x as much here), summed in float32 while every
    partial sum is an integer below 2**24, else in float64."""
    x = scratch[:g.numel()].view_as(g)
    below = torch.lt(torch.abs(g, out=x), thr, out=x)
    per = g.numel() if dims is None else math.prod(g.shape[d] for d in dims)
    dtype = torch.float64 if per > 2**24 else None
    return below.sum(dtype=dtype) if dims is None else below.sum(dims, dtype=dtype)


class HiddenGrads:
    """dLoss/dh_t of a recurrent net's recorded step: :meth:`sink` is the net's ``hidden_sink``, called
    with each hidden state h_t (a solo net's (B, H), a stacked one's (K, H, B)); it keeps a reference
    to h_t's full gradient by (layer, t). :meth:`take` gives them back after the backward pass."""

    def __init__(self):
        self.keys: list[tuple[int, int]] = []
        self.grads: dict = {}  # (layer, t) -> dLoss/dh_t

    def sink(self, layer: int, t: int, h: torch.Tensor) -> None:
        self.keys.append((layer, t))
        if h.requires_grad:
            h.register_hook(lambda g, key=(layer, t): self.grads.__setitem__(key, g))

    def take(self, zero: torch.Tensor) -> tuple[list[tuple[int, int]], list[torch.Tensor]]:
        """The (layer, t) keys in order (layer by layer, t in order) and their gradients, ``zero``
        where none reached h_t; then forgets them."""
        keys = sorted(self.keys)
        grads = [self.grads.get(k, zero) for k in keys]
        self.keys, self.grads = [], {}
        return keys, grads


def _bias(layer) -> torch.Tensor | None:
    """A layer's own trainable bias, if it has one (an Embedding has no ``bias`` attribute; some
    modules keep a buffer, such as a causal mask, under that name)."""
    b = getattr(layer, "bias", None)
    return b if isinstance(b, torch.nn.Parameter) and b.requires_grad else None


def _unchanged(kept: tuple | None, x: torch.Tensor, act: torch.nn.Module) -> bool:
    """Whether ``x``, an activation module's input, is the layer output ``kept`` = (tensor, version)
    as the layer returned it: the same tensor, not changed in place since (``out += identity`` in
    torchvision's residual blocks), except by the activation itself where it is in-place."""
    return kept is not None and x is kept[0] and x._version == kept[1] + bool(getattr(act, "inplace", False))


class GradientRecorder:
    def __init__(self, tracked: list[Tracked], activation: Activation | list, params: list | None = None,
                 kinds=KINDS, model=None, match_act: bool = False, dtype: torch.dtype = torch.float32):
        """``activation``: the :class:`Activation` of every layer's ``act``, or one per tracked layer
        (None where the layer has no act, or one vgp cannot describe: no act kinds for it).
        ``params``: every trained parameter (default: the tracked layers' own), for the total
        gradient norm, which is taken from the same per-tensor norms as weight_grad/bias_grad.
        ``kinds``: what to record; only what they need is hooked, copied and computed.
        ``model``: a recurrent net (one with ``hidden_sink``) also gets dLoss/dh_t per time step.
        ``match_act``: an act's call counts for layer i only when its input is the very tensor that
        layer i's call returned (for models vgp did not build, where one activation module may be
        shared by several layers, or applied to other tensors too: a ReLU after a residual add).

        A layer called several times in one forward pass (weight sharing, recurrence): its
        output_grad is the norm over all calls' output gradients together (the square root of the
        sum of their squares), its activation statistics are those of its last call.

        ``dtype``: the precision the backward pass runs in (autocast's: float16, bfloat16, or
        float32), whose smallest normal number ``underflow`` compares with (see :meth:`_underflow`)."""
        self.tracked = tracked
        self.kinds = set(kinds)
        self._want_z = "output_grad" in self.kinds
        self._want_act = bool(self.kinds & set(ACT_KINDS))
        self._want_update = "update_ratio" in self.kinds
        self.names = [t.name for t in tracked]
        self.acts = list(activation) if isinstance(activation, (list, tuple)) else [activation] * len(tracked)
        if len(self.acts) != len(tracked):
            raise ValueError(f"{len(self.acts)} activations for {len(tracked)} tracked layers")
        self.activation = activation if isinstance(activation, Activation) else None  # the one for all, if so
        self.match_act = match_act
        # an entry without a layer (a transformer block's residual stream) has no weight: output_grad only
        self.has_weight = [t.layer is not None for t in tracked]
        self.weights = [t.layer.weight for t in tracked if t.layer is not None]
        own_biases = [_bias(t.layer) if t.layer is not None else None for t in tracked]
        self.has_bias = [b is not None for b in own_biases]
        self.biases = [b for b in own_biases if b is not None]
        self.has_act = [t.act is not None and a is not None for t, a in zip(tracked, self.acts)]
        self._outs: list = []  # match_act: layer i's output of this forward pass, until its act sees it
        self._prev = [torch.empty_like(w) for w in self.weights] if self._want_update else []  # W before the step
        self._hooks: list = []
        self._out_grads: list = []
        self._act_in: list = []
        self._act_out: list = []
        self._bias_index = torch.tensor([i for i, b in enumerate(self.has_bias) if b], dtype=torch.long)
        self._weight_index = torch.tensor([i for i, w in enumerate(self.has_weight) if w], dtype=torch.long)
        self.params = list(params) if params is not None else self.weights + self.biases
        pos = {id(p): k for k, p in enumerate(self.params)}
        self._weight_list = [pos[id(w)] for w in self.weights]
        self._weight_pos = torch.tensor(self._weight_list)
        self._bias_pos = torch.tensor([pos[id(b)] for b in self.biases], dtype=torch.long)
        self.total_grad_norm: torch.Tensor | None = None  # set by after_backward
        self.model = model if hasattr(model, "hidden_sink") else None
        self._time = HiddenGrads()
        self.time_keys: list[tuple[int, int]] = []  # (layer, t) of time_values, after after_backward
        self.time_values: torch.Tensor | None = None  # (len(time_keys),) norms of dLoss/dh_t
        self._values: torch.Tensor | None = None
        self._buffers: dict = {}  # (shape, layers) -> (index, stacked activations, scratch)
        self.tiny = torch.finfo(dtype).tiny  # 6.1e-5 for float16; 1.2e-38 for bfloat16 and float32
        self._flat: tuple | None = None  # underflow: sizes, and a float and a bool scratch buffer

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._detach()
        return False

    def _detach(self):
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        if self.model is not None:
            self.model.hidden_sink = None

    def applicable(self) -> list[tuple[str, int]]:
        """The (kind, layer index) pairs that exist: no bias kinds without a bias, no act kinds
        for the output layer."""
        pairs = []
        for i in range(len(self.tracked)):
            for k in KINDS:
                if k == "bias_grad" and not self.has_bias[i]:
                    continue
                if k in ACT_KINDS and not self.has_act[i]:
                    continue
                if k == "output_grad" and not self.tracked[i].output:
                    continue
                if k in WEIGHT_KINDS and not self.has_weight[i]:
                    continue
                if k not in self.kinds:
                    continue
                pairs.append((k, i))  # layer by layer, kinds in KINDS order
        return pairs

    # -- a recorded step -------------------------------------------------------------------
    def start(self) -> None:
        """Hook the forward pass of this step: outputs of each layer, inputs/outputs of each act."""
        n = len(self.tracked)
        self._out_grads = [None] * n
        self._act_in = [None] * n
        self._act_out = [None] * n
        self._outs = [None] * n
        if self.model is not None:
            self._time = HiddenGrads()
            self.model.hidden_sink = self._time.sink
        for i, t in enumerate(self.tracked):
            keep = self.match_act and self._want_act and self.has_act[i]
            want_z = self._want_z and t.output
            if want_z and t.stream is not None:  # output_grad at the residual stream (Tracked.stream)
                self._hooks.append(t.stream.register_forward_hook(self._layer_hook(i, True, False)))
                want_z = False
            if want_z or keep:
                self._hooks.append(t.layer.register_forward_hook(self._layer_hook(i, want_z, keep)))
            if self.has_act[i] and self._want_act:
                self._hooks.append(t.act.register_forward_hook(self._act_hook(i)))

    def _layer_hook(self, i, want_z: bool = True, keep: bool = False):
        def add(g):
            # the norm, not the gradient, is kept: holding every layer's gradient through the
            # backward pass would keep megabytes alive that the allocator could otherwise reuse
            # in float64 (see _norms): exact for gradients of 1e-45 to 3.4e38, in any autocast dtype
            n, prev = norm(g), self._out_grads[i]
            self._out_grads[i] = n if prev is None else torch.hypot(prev, n)  # several calls

        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                return
            if keep:
                self._outs[i] = (output, output._version)
            if want_z and output.requires_grad:
                output.register_hook(add)

        return hook

    def _act_hook(self, i):
        keep_input = self.acts[i].saturated is None  # z is needed only without a shortcut
        match = self.match_act

        def hook(module, inputs, output):
            if match:
                if not inputs or not _unchanged(self._outs[i], inputs[0], module):
                    return  # this call of a shared module is not applied to layer i's output
                self._outs[i] = None
            if keep_input:
                self._act_in[i] = inputs[0].detach()
            self._act_out[i] = output.detach()

        return hook

    def after_backward(self, scale: torch.Tensor | None = None) -> None:
        """Norms of dLoss/dW, dLoss/db, dLoss/dz and of W (before clipping and the step).

        ``scale``: the loss scale of this step's backward pass (a 0-d tensor on the device; None: 1),
        when the parameters' gradients have been unscaled already (``GradScaler.unscale_``) but the
        gradients the hooks saw (dLoss/dz, dLoss/dh_t) were not: those are divided by it here."""
        self._detach()
        n = len(self.tracked)
        # float64: a norm or std of tiny gradients or activations may be far below float32's range
        values = torch.full((len(KINDS), n), math.nan, dtype=torch.float64, device=self.weights[0].device)
        row = {k: j for j, k in enumerate(KINDS)}
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        norms = _norms(grads)  # one per parameter tensor
        self.total_grad_norm = torch.linalg.vector_norm(norms)
        if self._weight_pos.device != norms.device:  # once: a copy from the host would wait for the GPU
            self._weight_pos, self._bias_pos, self._bias_index, self._weight_index = (
                t.to(norms.device) for t in (self._weight_pos, self._bias_pos, self._bias_index, self._weight_index))
        values[row["weight_grad"], self._weight_index] = norms[self._weight_pos]
        if self.biases:
            values[row["bias_grad"], self._bias_index] = norms[self._bias_pos]
        # a layer whose output got no gradient (not on the loss's path) has a zero output_grad
        if self._want_z:
            zero = torch.zeros((), dtype=torch.float64, device=values.device)
            values[row["output_grad"]] = torch.stack([g if g is not None else zero for g in self._out_grads])
            if scale is not None:
                values[row["output_grad"]] /= scale
        weights = [w.detach() for w in self.weights]
        if self._want_update or "weight" in self.kinds:
            values[row["weight"], self._weight_index] = _norms(weights)
        if self._want_update:
            torch._foreach_copy_(self._prev, weights)
        if self._want_act:
            self._act_stats(values, row)
        if "underflow" in self.kinds:
            values[row["underflow"], self._weight_index] = self._underflow(grads, norms, scale)
        if self.model is not None:
            keys, time_grads = self._time.take(torch.zeros(1, device=values.device))
            self.time_keys = keys
            self.time_values = _norms([g.float() for g in time_grads]) if keys else None
            if keys and scale is not None:
                self.time_values /= scale
        self._values = values
        self._out_grads = [None] * n
        self._act_in = [None] * n
        self._act_out = [None] * n
        self._outs = [None] * n

    def _group_buffers(self, shape: tuple, idx: list[int], device):
        """Reused buffers for a group of equally shaped activations: its layer index and two
        (G, B, U) tensors (a fresh multi-megabyte tensor on every step costs page faults)."""
        key = (shape, tuple(idx))
        if key not in self._buffers:
            g = len(idx)
            self._buffers[key] = (torch.tensor(idx, device=device),
                                  torch.empty(g, shape[0], math.prod(shape[1:]), device=device),
                                  torch.empty(g, shape[0], math.prod(shape[1:]), device=device))
        return self._buffers[key]

    def _underflow(self, grads: list, norms: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        """Per layer, the fraction of the weight gradient's entries that are zero or below the smallest
        normal number of the backward pass's precision: |g| S < tiny, with g the (unscaled) gradient
        and S the loss scale in effect (1 without one): (L,) float64.

        Measured in the scaled space, where the backward pass ran: what fp16 loses is what |g S| falls
        below its 6.1e-5 (there it keeps only a few bits as a subnormal, then becomes 0). Subnormals
        count as lost: their relative precision is gone, and vgp flags the onset, not only the zeros.
        With S a power of two (GradScaler's always is) tiny / S is exact, so comparing |g| with it
        is the same test, without multiplying the gradient (which could overflow). In float32 and
        bfloat16 (tiny 1.2e-38) the count is mostly exact zeros: a dead ReLU unit's whole row counts,
        so compare precisions of one net rather than read a ReLU net's count as underflow alone.
        ``grads``: every parameter's gradient (zeros where None), ``norms`` their norms (to put the
        result on the right device). No host synchronisation: the counts stay on the device."""
        if self._flat is None:  # once: scratch for the largest weight gradient, reused layer by layer
            sizes = [w.numel() for w in self.weights]
            self._flat = (torch.tensor(sizes, dtype=torch.float64, device=norms.device),
                          torch.empty(max(sizes), device=norms.device))
        n, scratch = self._flat
        thr = torch.full((), self.tiny, device=norms.device)
        if scale is not None:
            thr = thr / scale
        counts = [count_below(grads[k].detach(), thr, scratch) for k in self._weight_list]  # layer by layer
        return torch.stack(counts).double() / n

    def output_grad_ratio(self, flat: list[float], layers: list[int]) -> float:
        """output_grad of ``layers[0]`` over that of ``layers[-1]`` (tracked-layer indices), read from
        ``flat``, an :meth:`after_step` result flattened to a list: inf where only the last is 0, NaN
        where both are."""
        start = KINDS.index("output_grad") * len(self.tracked)
        first, last = flat[start + layers[0]], flat[start + layers[-1]]
        if last == 0:
            return math.nan if first == 0 else math.inf
        return first / last

    def after_step(self) -> torch.Tensor:
        """The step's values as a (len(KINDS), L) tensor on the device (NaN where not applicable)."""
        values, self._values = self._values, None
        if self._want_update:
            torch._foreach_sub_(self._prev, [w.detach() for w in self.weights])  # W_old - W_new, in place
            w = self._weight_index
            moved = _norms(self._prev)
            values[KINDS.index("update_ratio"), w] = moved / values[KINDS.index("weight"), w]
        return values

    def _act_stats(self, values: torch.Tensor, row: dict) -> None:
        """Mean and std of each activation output, saturated and dead fractions, into ``values``.

        Layers whose activations have the same shape are stacked and reduced together (one
        kernel per statistic instead of one per layer). ``act_mean``/``act_std``: over batch and
        units (population std). ``saturation``: fraction of (example, unit) entries with
        |phi'(pre-activation)| below 5% of its maximum. ``dead``: fraction of units (features;
        for conv maps, channel-positions; for sequences (B, T, H), position-features) whose output
        is zero for every example of the batch.
        All four equal their float64 values computed from the float32 activations (the fractions
        exactly; saturation read off h may differ only where z is within rounding of the threshold).
        """
        groups: dict[tuple, list[int]] = {}  # (shape, activation) -> layers
        for i, h in enumerate(self._act_out):
            if h is not None:
                groups.setdefault((tuple(h.shape), id(self.acts[i])), []).append(i)
        for (shape, _), idx in groups.items():
            act = self.acts[idx[0]]
            index, h, tmp = self._group_buffers(shape, idx, values.device)
            torch.stack([self._act_out[i] for i in idx], out=h.view(len(idx), *shape))
            if act.saturated is None:
                torch.stack([self._act_in[i] for i in idx], out=tmp.view(len(idx), *shape))
            first = row["act_mean"]  # the four act kinds are consecutive in KINDS
            values[first:first + 4, index] = act_stats(act, h, tmp)


def act_stats(act: Activation, h: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """act_mean, act_std, saturation and dead of G groups of activations, as a (4, G) float64 tensor.

    ``h``: (G, B, U) float32 outputs of ``act`` (overwritten); ``tmp``: (G, B, U) scratch, holding
    the pre-activations where ``act.saturated`` is None (saturation is then read off phi'(z)).
    A group is one layer (:class:`GradientRecorder`), or one layer of one member of a batched model
    (:mod:`vgp.batched`): the statistics of each are those of its own (B, U) slice.
    """
    count = h.shape[1] * h.shape[2]
    if act.saturated is not None:
        sat = act.saturated(h, tmp)  # 0./1. in tmp
    else:
        sat = torch.lt(act.dphi(tmp).abs_(), SATURATION * act.dphi_max, out=tmp)
    # a float32 count is exact while every partial sum is an integer below 2**24
    n_sat = sat.sum((1, 2), dtype=torch.float64 if count > 2**24 else None)
    lo, hi = h.amin(1), h.amax(1)  # (G, U): a unit is dead where both are 0
    n_dead = (lo == 0).logical_and_(hi == 0).sum(1)
    mean, std = _mean_std(h, lo, hi)  # last: it overwrites h
    return torch.stack([mean, std, n_sat.double() / count, n_dead.double() / h.shape[2]])
