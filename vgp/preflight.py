"""Will this config run? What building its model and its first step would reject, found before
anything is written, and whether it fits in memory.

``check(cfg, source)`` raises ConfigError naming the file (``source``) and the key. It looks at:

- the data set's :class:`vgp.data.Shapes`, from its arguments (files: their headers) without
  loading it: a batch larger than the training set, a net that does not fit the data's shape;
- a *miniature* of the net: the same architecture, depth, norm, skip and activation, 1 to 3 units
  wide, built on the CPU and put through a forward and backward pass of a batch of one or two
  examples (a batch of one if the config's batch is one: batch norm needs two values per channel
  in training), and an evaluation pass. Whatever PyTorch raises there is the config's mistake;
- the weight inits, run on small tensors (their own argument checks). The optimizers are not built
  (constructing one imports torch._dynamo, seconds): their registered ranges and rules are
  PyTorch's own checks;
- depth: PyTorch frees the graph of a backward pass that had tensor hooks (the recorder's
  ``output_grad``) recursively, one C stack frame chain per layer, and a net deeper than the stack
  allows crashes with a segmentation fault after its first step (about 25,000 layers with Linux's
  8 MiB stack); ``max_depth`` keeps a margin of 2.5x below that;
- memory: parameters, gradients and optimizer state (exact counts: a parameter count is a
  quadratic in the width, fitted exactly on the miniatures), the tensors autograd saves for a batch
  (measured on the miniatures, linear in the width and the batch), evaluation and the data set,
  against the memory available now (``/proc/meminfo``'s MemAvailable, or the GPU's free memory).

The miniatures do not depend on the width or the batch size, so a sweep checks one per distinct
architecture/depth/activation/data shape (cached), and the rest per cell is arithmetic.
"""

from __future__ import annotations

import functools
import math
import os
import resource
import time
import warnings
from dataclasses import dataclass

from vgp.errors import ConfigError, UserError, clipped

FLOAT = 4  # bytes: everything vgp trains is float32
STACK_BYTES_PER_LAYER = 800  # measured: ~330 bytes of C stack per hooked layer when a graph is freed
T_PROBE = (4, 8)  # sequence lengths of recurrent miniatures (their memory is linear in T)
SEQUENCE = ("rnn", "lstm", "gru", "transformer")  # nets on sequences (T, F), probed at the lengths T_PROBE
BLOCK_CHAIN = 16  # a transformer block's chain of autograd nodes, counted as layers for max_depth
MAX_EXAMPLE = 10 ** 6  # values in one example (CIFAR-10: 3,072; a 3x224x224 image: 150,528)
MAX_OUTPUTS = 10 ** 6  # classes or regression outputs


def max_depth() -> int:
    """The deepest net (layers in a chain) whose graph this process can free: RLIMIT_STACK / 800."""
    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 100_000
    return max(100, soft // STACK_BYTES_PER_LAYER)


def _stack_text() -> str:
    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft / 2**20:g} MiB"


def check(cfg, source: str = "config", label=None, device: str | None = None) -> None:
    """Raise ConfigError if ``cfg`` (a validated :class:`vgp.config.Config`) would fail to build,
    fail its first step, or not fit in memory. ``label(key)``: who set a key (the file, or an
    override), for the message; ``device``: where it will run (default: ``cfg.device``)."""
    label = label or (lambda key: source)

    def bad(key, msg):
        raise ConfigError(f"{label(key)}: {key}: {msg}")

    from vgp import data as datasets

    try:
        shapes = datasets.shapes(cfg.data)
    except UserError as e:
        raise ConfigError(f"{label('data')}: data: {e}") from None
    m, t = cfg.model, cfg.train
    name = cfg.data["name"]
    if t.batch_size > shapes.n_train:
        bad("train.batch_size", f"{t.batch_size} is more than the {shapes.n_train} training examples of data "
                                f"'{name}'; use at most {shapes.n_train} (or more data)")
    if m.arch == "resnet" and len(shapes.shape) != 3:
        bad("model.arch", f"a resnet needs image data of shape (C, H, W); data '{name}' gives inputs of shape "
                          f"{shapes.shape} (image sets: digits, mnist, fashion_mnist, cifar10)")
    if m.arch in SEQUENCE and len(shapes.shape) != 2:
        bad("model.arch", f"{m.arch} needs sequences of shape (T, F); data '{name}' gives inputs of shape "
                          f"{shapes.shape} (sequence sets: adding, copy, markov, seq_digits, seq_mnist)")
    chain = m.depth + 1 if m.arch == "mlp" else m.depth * BLOCK_CHAIN if m.arch == "transformer" else m.depth
    limit = max_depth()
    if chain > limit:
        bad("model.depth", f"{m.depth} layers is too deep for this process: PyTorch frees the graph of a recorded "
                           f"step recursively, layer by layer, and beyond about {int(limit * 2.5):,} layers that "
                           f"overflows the C stack ({_stack_text()}) and crashes with a segmentation fault; use "
                           f"at most {limit:,} layers, or raise the stack limit (ulimit -s)")

    # sizes the miniatures themselves could not hold (their first and last layers scale with them)
    values = math.prod(shapes.shape)
    if values > MAX_EXAMPLE:
        bad("data", f"one example of data '{name}' has {values:,} values (shape {shapes.shape}); at most "
                    f"{MAX_EXAMPLE:,} (data sets are held in memory)")
    if shapes.num_outputs > MAX_OUTPUTS:
        bad("data", f"data '{name}' asks for {shapes.num_outputs:,} outputs (classes); at most {MAX_OUTPUTS:,}")
    build = _data_bytes(shapes)[1]
    _compare(build, _available_host(), "memory", {"data (while it is built)": build}, label)

    recurrent = m.arch in ("rnn", "lstm", "gru")
    kind = _device_kind(device or cfg.device)
    if t.precision == "bf16" and kind.startswith("cuda") and not _cuda_bf16(kind):
        bad("train.precision", f"bf16 needs a GPU that computes in bfloat16 (compute capability 8.0 or later); "
                               f"{kind} does not: use fp16 or fp32")
    # the CPU's autocast kernels: the miniatures run in the run's precision (a GPU runs every net in any)
    amp = t.precision if kind == "cpu" else "fp32"
    probe = _probe(m.arch, m.depth, m.norm, m.skip, _frozen(m.activation), _forget_bias(m), shapes.shape,
                   shapes.num_outputs, shapes.task, shapes.target, t.batch_size == 1, _extra(m), amp)
    if probe.error and "more than 1 value per channel" in probe.error:
        bad(probe.key, f"{t.batch_size} with model.norm=batchnorm: batch norm needs more than one value per "
                       f"channel in training (PyTorch: {probe.error}); use train.batch_size >= 2 or another "
                       f"model.norm")
    if probe.error and probe.key == "train.precision":
        bad(probe.key, f"PyTorch cannot run this net in {t.precision} on the CPU ({probe.error}); use "
                       f"{'bf16 or fp32' if t.precision == 'fp16' else 'fp32'} here, or a GPU (device=cuda)")
    if probe.error:
        bad(probe.key, f"PyTorch rejects this {probe.where}: {probe.error}")
    for key, spec in (("model.init", m.init), ("model.bias_init", m.bias_init), ("model.recurrent_init",
                                                                                m.recurrent_init)):
        if key == "model.recurrent_init" and not recurrent:
            continue
        problem = _init_problem(_frozen(spec), key == "model.bias_init", _frozen(m.activation))
        if problem:
            bad(key, f"PyTorch rejects this init: {problem}")
    _check_memory(cfg, shapes, probe, device or cfg.device, label)


# -- the miniatures --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Probe:
    """What the miniatures of one architecture told: parameter count and saved bytes as functions of
    the width (and, recurrent, of T), or the error PyTorch raised (with the key to blame)."""
    params: tuple = (0, 0, 0)  # P(w) = a + b w + c w^2
    saved: tuple = (0, 0, 0, 0)  # bytes autograd saves per example: s0 + s1 w + s2 T + s3 w T
    eval_out: tuple = (0, 0, 0, 0)  # largest module output per example (elements), same form
    error: str | None = None
    key: str = ""
    where: str = ""


def _extra(m):
    """The transformer's own settings that shape its miniature (heads is not one: miniatures have 1 head)."""
    if m.arch != "transformer":
        return None
    return (m.mlp_ratio, m.norm_position, m.residual_scale, m.positions)


def _forget_bias(m):
    return m.forget_bias if m.arch == "lstm" else None  # the other nets do not use it: one probe for all


def _frozen(value):
    """A hashable copy of a spec (dicts and lists become sorted tuples), for the caches."""
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def _thaw(value):
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in value}


@functools.lru_cache(maxsize=4096)
def _probe(arch, depth, norm, skip, activation, forget_bias, shape, num_outputs, task, target,
           one_example: bool, extra: tuple | None = None, precision: str = "fp32") -> Probe:
    import torch

    recurrent = arch in SEQUENCE
    lengths = T_PROBE if recurrent else (None,)
    params, saved, outs = {}, {}, {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only wait on each other (seconds, on a busy CPU)
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():  # no RNG moved, no warnings shown
            warnings.simplefilter("ignore")
            for width in (1, 2, 3):
                for T in lengths:
                    p, s, o = _miniature(arch, depth, norm, skip, _thaw(activation), forget_bias, shape, num_outputs,
                                         task, target, one_example, width, T, backward=width > 1, extra=extra,
                                         precision=precision)
                    params[width] = p
                    if width > 1:
                        saved[width, T], outs[width, T] = s, o
    except _Rejected as e:
        return Probe(error=e.message, key=e.key, where=e.where)
    finally:
        torch.set_num_threads(threads)
    a, b, c = _quadratic(params[1], params[2], params[3])
    if recurrent:
        return Probe((a, b, c), _bilinear(saved, T_PROBE), _bilinear(outs, T_PROBE))
    (w0, w1) = (2, 3)
    s1 = saved[w1, None] - saved[w0, None]
    o1 = outs[w1, None] - outs[w0, None]
    return Probe((a, b, c), (saved[w0, None] - w0 * s1, s1, 0, 0), (outs[w0, None] - w0 * o1, o1, 0, 0))


class _Rejected(Exception):
    def __init__(self, key, where, message):
        super().__init__(message)
        self.key, self.where, self.message = key, where, message


def _miniature(arch, depth, norm, skip, activation, forget_bias, shape, num_outputs, task, target, one_example,
               width, T, backward, extra=None, precision: str = "fp32") -> tuple[int, float, float]:
    """Build the net ``width`` units wide (sequences cut to ``T`` steps) and, if ``backward``, run a
    training step and an evaluation pass on zeros, under the CPU's autocast to ``precision``. Returns
    (parameters, bytes saved for backward per example, largest module output per example in
    elements; float32's bytes: the estimate stays an upper bound under autocast)."""
    import torch

    from vgp import config, train
    from vgp.data import Data

    if T is not None:
        per_step = task == "classification" and len(target) == 1  # a class per time step
        shape = (T, shape[1])
        target = (T,) if per_step else target
    default = {"name": "default"}
    model_cfg = config.ModelConfig(arch=arch, depth=depth, width=width, activation=activation, init=default,
                                   bias_init=default, norm=norm, skip=skip, recurrent_init=default,
                                   forget_bias=forget_bias)
    if extra is not None:  # transformer: one head, so that widths 1, 2, 3 divide
        model_cfg.heads = 1
        model_cfg.mlp_ratio, model_cfg.norm_position, model_cfg.residual_scale, model_cfg.positions = extra
    n = 1 if one_example else 2
    x = torch.zeros((n,) + tuple(shape))
    y = torch.zeros((n,) + tuple(target), dtype=torch.int64 if task == "classification" else torch.float32)
    data = Data(x, y, x, y, tuple(shape), num_outputs, task, name="preflight")
    try:
        model, _ = train.build_model(model_cfg, data)
    except UserError as e:
        raise _Rejected("model.arch", "model", str(e)) from None
    except Exception as e:  # noqa: BLE001 - whatever PyTorch raises is the config's mistake
        raise _Rejected("model", "model", f"{type(e).__name__}: {clipped(e)}") from None
    params = sum(p.numel() for p in model.parameters())
    if not backward:
        return params, 0.0, 0.0
    storages: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        storages[st.data_ptr()] = max(storages.get(st.data_ptr(), 0), st.nbytes())
        return t

    largest = [0]

    def sizes(module, inputs, output):
        if isinstance(output, torch.Tensor) and not list(module.children()):
            largest[0] = max(largest[0], output.numel())

    def passes(dtype):  # a training step and an evaluation pass under autocast
        with torch.autocast("cpu", dtype=dtype):
            model.train()
            train.loss_fn(task)(model(x), y).backward()
            model.eval()
            with torch.no_grad():
                model(x)

    try:
        model.train()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = train.loss_fn(task)(model(x), y)
        loss.backward()
        handles = [mod.register_forward_hook(sizes) for mod in model.modules()]
        model.eval()
        with torch.no_grad():
            model(x)
        for h in handles:
            h.remove()
    except Exception as e:  # noqa: BLE001
        key = "train.batch_size" if one_example and "more than 1 value" in str(e) else "model"
        raise _Rejected(key, "model and batch", f"{type(e).__name__}: {clipped(e)}") from None
    if precision != "fp32":
        from vgp.train import PRECISIONS

        try:
            passes(PRECISIONS[precision])
        except Exception as e:  # noqa: BLE001 - e.g. oneDNN has no float16 LSTM
            raise _Rejected("train.precision", "precision", f"{type(e).__name__}: {clipped(e)}") from None
    return params, sum(storages.values()) / n, largest[0] / n


def _quadratic(p1, p2, p3) -> tuple[int, int, int]:
    """Exact a, b, c of P(w) = a + b w + c w^2 from P(1), P(2), P(3)."""
    c2 = p3 - 2 * p2 + p1  # = 2c
    b = p2 - p1 - 3 * c2 // 2
    return p1 - b - c2 // 2, b, c2 // 2


def _bilinear(values: dict, lengths) -> tuple:
    """s0 + s1 w + s2 T + s3 w T through the four points (w, T) in {2, 3} x lengths."""
    (t0, t1) = lengths
    f = {k: v for k, v in values.items()}
    s3 = ((f[3, t1] - f[2, t1]) - (f[3, t0] - f[2, t0])) / (t1 - t0)
    s1 = (f[3, t0] - f[2, t0]) - s3 * t0
    s2 = ((f[2, t1] - f[2, t0]) / (t1 - t0)) - s3 * 2
    s0 = f[2, t0] - 2 * s1 - s2 * t0 - s3 * 2 * t0
    return s0, s1, s2, s3


def _at(form: tuple, width: int, T: int | None) -> float:
    s0, s1, s2, s3 = form
    T = T or 0
    return max(0.0, s0 + s1 * width + s2 * T + s3 * width * T)


@functools.lru_cache(maxsize=1024)
def _init_problem(spec, bias: bool, activation) -> str | None:
    """What PyTorch says when this init runs on a small Linear and a small conv weight, or None."""
    import torch

    from vgp import activations, inits

    default = {"name": "default"}
    spec = _thaw(spec)
    act = activations.get(_thaw(activation))
    try:
        with torch.random.fork_rng(devices=[]):
            for shape in ((3, 2), (2, 3), (3, 2, 3, 3)):
                w, b = torch.empty(shape), torch.empty(shape[0])
                inits.init_tensors(w, b, act, default if bias else spec, spec if bias else default)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {clipped(e)}"
    return None


# -- memory ----------------------------------------------------------------------------------------

def estimate(cfg, shapes=None, probe: Probe | None = None) -> dict:
    """Bytes a run of ``cfg`` needs: ``weights`` (parameters, gradients, optimizer state, the recorder's
    snapshot for update_ratio), ``activations`` (what autograd keeps for a batch, plus the gradients
    flowing back), ``evaluation`` (a no-grad pass over a chunk of the test set), ``data`` (the
    tensors of the data set, once) and ``data_build`` (host memory while it is built: generated,
    standardised and split, about three times the tensors, and whatever else its builder holds)."""
    from vgp import data as datasets
    from vgp.optim import state_copies

    m, t = cfg.model, cfg.train
    shapes = shapes or datasets.shapes(cfg.data)
    recurrent = m.arch in SEQUENCE
    probe = probe or _probe(m.arch, m.depth, m.norm, m.skip, _frozen(m.activation), _forget_bias(m), shapes.shape,
                            shapes.num_outputs, shapes.task, shapes.target, t.batch_size == 1, _extra(m))
    T = shapes.shape[0] if recurrent else None
    a, b, c = probe.params
    n_params = a + b * m.width + c * m.width ** 2
    if m.arch == "transformer" and m.positions == "learned":  # the miniatures' (T, width) positions had T_PROBE[-1]
        n_params += (T - T_PROBE[-1]) * m.width
    # weights, gradients, optimizer state, the recorder's snapshot, and the step's temporaries (PyTorch's
    # foreach kernels: one parameter-sized tensor, two for the adaptive methods)
    temporaries = 1 if t.optimizer["name"] == "sgd" else 2
    copies = 2 + state_copies(t.optimizer) + ("update_ratio" in cfg.log.kinds) + temporaries
    # autograd's saved tensors for a batch, the gradients flowing back (about as large again, at the
    # widest point: counted as half), and the recorder's per-time-step gradients of recurrent nets
    acts = _at(probe.saved, m.width, T) * t.batch_size * 1.5
    if m.arch == "transformer":  # attention scores (B, heads, T, T) per block, beyond what 1-head miniatures saw
        acts += t.batch_size * m.heads * T * T * m.depth * FLOAT * 2
    elif recurrent:
        acts += t.batch_size * T * m.depth * m.width * FLOAT
    chunk = min(4096, shapes.n_test)  # vgp.train.evaluate's chunks: input, output and a skip alive at once
    evals = chunk * FLOAT * 3 * (_at(probe.eval_out, m.width, T) + (T * m.width if recurrent else 0))
    data, build = _data_bytes(shapes)
    return {"parameters": n_params, "weights": n_params * FLOAT * copies, "activations": acts, "evaluation": evals,
            "data": data, "data_build": build}


def _data_bytes(shapes) -> tuple[int, int]:
    """(the data set's tensors, the host memory while it is built: generated, standardised and split,
    about three times the tensors, and whatever else its builder holds)."""
    per_example = math.prod(shapes.shape) * FLOAT + math.prod(shapes.target or (1,)) * 8
    data = (shapes.n_train + shapes.n_test) * per_example
    return data, 3 * data + shapes.build_bytes


def _check_memory(cfg, shapes, probe: Probe, device: str, label) -> None:
    e = estimate(cfg, shapes, probe)
    needed = e["weights"] + e["activations"] + e["evaluation"]
    parts = {"parameters, gradients and optimizer state": e["weights"],
             f"activations of a batch of {cfg.train.batch_size}": e["activations"], "evaluation": e["evaluation"]}
    kind = _device_kind(device)
    if kind == "cpu":
        parts["data (while it is built)"] = e["data_build"]
        _compare(needed + e["data_build"], _available_host(), "memory", parts, label)
    else:
        _compare(e["data_build"], _available_host(), "memory", {"data (while it is built)": e["data_build"]}, label)
        parts["data"] = e["data"]
        free = _available_cuda(kind)
        if free is not None:
            _compare(needed + e["data"], free, f"GPU memory on {kind}", parts, label)


def _compare(needed: float, available: float | None, what: str, parts: dict, label) -> None:
    if available is None or needed <= available:
        return
    detail = ", ".join(f"{k} {_size(v)}" for k, v in parts.items() if v >= 0.01 * needed)
    raise ConfigError(f"{label('model')}: this run needs about {_size(needed)} of {what} ({detail}) but "
                      f"{_size(available)} is available; make model.width, model.depth, train.batch_size or the "
                      f"data set smaller")


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.3g} EiB"


def _cuda_bf16(kind: str) -> bool:
    import torch

    index = int(kind.split(":")[1]) if ":" in kind else 0
    try:
        return torch.cuda.get_device_capability(index) >= (8, 0)
    except (RuntimeError, AssertionError, ValueError):
        return True  # vgp.train.pick_device says what is wrong with the device


@functools.lru_cache(maxsize=64)
def _device_kind(device: str) -> str:
    """'cpu', or 'cuda:N' where CUDA is here ('auto' as vgp.train.pick_device decides). A GPU that is
    not here is judged by the host's memory only: validating on a login node must not fail."""
    if device == "cpu":
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        return "cpu" if device == "auto" else "elsewhere"
    if device in ("auto", "cuda"):
        return "cuda:0"
    return device


_HOST = {"at": 0.0, "bytes": None}


def _available_host() -> float | None:
    """MemAvailable from /proc/meminfo (read at most once a second: sweeps check thousands of runs)."""
    now = time.monotonic()
    if now - _HOST["at"] > 1.0:
        _HOST["at"], _HOST["bytes"] = now, _read_meminfo()
    return _HOST["bytes"]


def _read_meminfo() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _available_cuda(kind: str) -> float | None:
    if not kind.startswith("cuda"):
        return None
    import torch

    index = int(kind.split(":")[1]) if ":" in kind else 0
    if index >= torch.cuda.device_count():
        return None  # vgp.train.pick_device says so, before anything is written
    try:
        return float(torch.cuda.mem_get_info(index)[0])
    except RuntimeError:
        return None
