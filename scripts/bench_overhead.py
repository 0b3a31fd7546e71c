"""How much does recording cost? vgp's training loop against a bare hand-written PyTorch loop.

Same model (built by vgp, so the networks are identical), same data on the device, same batch
order, same optimizer and steps, in one process; repetitions are interleaved and the median
taken, so that drift of the machine hits every variant alike. Prints the ratios.

    python scripts/bench_overhead.py                       # 20-layer width-256 tanh MLP, CPU
    python scripts/bench_overhead.py --device cuda --steps 2000
    python scripts/bench_overhead.py --activation gelu     # saturation from phi'(z), not from h
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from vgp import config, data as datasets
from vgp.optim import OPTIMIZERS
from vgp.train import batches, build_model, evaluate, run


GRADS = ["weight_grad", "bias_grad", "output_grad"]


def make_cfg(args, every: int, kinds=None) -> config.Config:
    log = {"every": every, **({"kinds": kinds} if kinds else {})}
    return config.from_dict({
        "name": f"bench-every{every}", "device": args.device,
        "model": {"depth": args.depth, "width": args.width, "activation": args.activation, "init": "xavier_normal"},
        "data": {"name": "teacher", "dim": 64, "n_train": 8192, "n_test": 256},
        "train": {"steps": args.steps, "batch_size": args.batch_size, "eval_every": 10**9,
                  "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9}},
        "log": log,
    })


def bare(cfg: config.Config) -> float:
    """The loop a person would write by hand: seconds for cfg.train.steps steps."""
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    d = datasets.load(cfg.data, cfg.seed).to(device)
    model, _ = build_model(cfg.model, d)
    model.to(device).train()
    opt = OPTIMIZERS.build(cfg.train.optimizer, list(model.parameters()))
    it = batches(len(d.x_train), cfg.train.batch_size, cfg.seed, device)
    t = time.perf_counter()
    evaluate(model, d.x_test, d.y_test, d.task)  # vgp evaluates at step 0 too
    for _ in range(cfg.train.steps):
        idx = next(it)
        loss = F.cross_entropy(model(d.x_train[idx]), d.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    final = loss.item()  # one synchronisation at the end, as any loop has
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert final == final
    return time.perf_counter() - t


def vgp_loop(cfg: config.Config, out: str) -> float:
    """vgp's loop (train_s: the loop alone, without building the data, the model and the files' finish)."""
    return run(cfg, out=out, force=True, quiet=True).summary["train_s"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--activation", default="tanh", help="a registered activation's name")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = {  # name: config (None: the bare loop)
        "bare loop": None,
        "vgp, every step, all kinds": make_cfg(args, 1),
        "vgp, every 10th step, all kinds": make_cfg(args, 10),
        "vgp, every step, gradients only": make_cfg(args, 1, GRADS),
        "vgp, every 10th step, gradients only": make_cfg(args, 10, GRADS),
    }
    times = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as out:
        vgp_loop(make_cfg(args, 1), out)  # warm-up: allocator, first-call overheads
        for _ in range(args.repeats):
            for name, cfg in variants.items():
                times[name].append(bare(make_cfg(args, 1)) if cfg is None else vgp_loop(cfg, out))
    base = statistics.median(times["bare loop"])
    print(f"{args.depth}-layer width-{args.width} {args.activation} MLP, batch {args.batch_size}, "
          f"{args.steps} steps on {args.device} ({torch.get_num_threads()} threads), median of {args.repeats}:")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:38s} {1000 * med / args.steps:6.2f} ms/step  {med / base:5.3f}x bare")


if __name__ == "__main__":
    main()
