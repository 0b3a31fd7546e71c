"""How much does vgp.Recorder cost in a user's own loop? The same loop with and without it.

Same model (a plain nn.Sequential of Linear and activation modules, built here, not by vgp), same
data on the device, same batches, same optimizer and steps, in one process; repetitions are
interleaved and the median taken, so that drift of the machine hits every variant alike.

    python scripts/bench_recorder.py                       # 20-layer width-256 tanh MLP, CPU
    python scripts/bench_recorder.py --device cuda --steps 2000
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

import vgp
from bench_overhead import report  # the same table as bench_overhead.py

ACTS = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}
GRADS = ["weight_grad", "bias_grad", "output_grad"]


def make_model(args) -> nn.Module:
    torch.manual_seed(0)
    layers, width = [nn.Linear(64, args.width)], args.width
    for _ in range(args.depth - 1):
        layers += [ACTS[args.activation](), nn.Linear(width, width)]
    layers += [ACTS[args.activation](), nn.Linear(width, 10)]
    return nn.Sequential(*layers).to(args.device)


def loop(args, x, y, out: str | None, every: int = 1, kinds=None) -> float:
    """Seconds for args.steps steps; ``out`` None: no recorder."""
    model = make_model(args)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    rec = vgp.Recorder(model, out=out, every=every, force=True, **({"kinds": kinds} if kinds else {})) \
        if out else None
    with rec if rec is not None else _nothing():
        t = time.perf_counter()
        for _ in range(args.steps):
            idx = torch.randint(0, len(x), (args.batch_size,), generator=gen).to(x.device)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if rec is not None:
                rec.step(loss)
            opt.step()
        final = loss.item()  # one synchronisation at the end, as any loop has
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t  # the loop, not the run folder's finish (summary, diagnosis)
    assert final == final
    return elapsed


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--activation", default="tanh", choices=list(ACTS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(8192, 64, device=args.device)
    y = torch.randint(0, 10, (8192,), device=args.device)
    variants = {  # name: (every, kinds); None: no recorder
        "bare loop": None,
        "Recorder, every step, all kinds": (1, None),
        "Recorder, every 10th step, all kinds": (10, None),
        "Recorder, every step, gradients only": (1, GRADS),
        "Recorder, every 10th step, gradients only": (10, GRADS),
    }
    times = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as out:
        loop(args, x, y, out + "/warm")  # warm-up: allocator, first-call overheads
        for _ in range(args.repeats):
            for name, v in variants.items():
                times[name].append(loop(args, x, y, None) if v is None else loop(args, x, y, out + "/r", *v))
    report(args, times, "bare loop", "bare")


if __name__ == "__main__":
    main()
