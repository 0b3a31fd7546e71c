"""How much does recording cost? vgp's training loop against a bare hand-written PyTorch loop.

Same model (built by vgp, so the networks are identical), same data on the device, same batch
order, same optimizer and steps, in one process; repetitions are interleaved and the median
taken, so that drift of the machine hits every variant alike. Prints the ratios.

    python scripts/bench_overhead.py                       # 20-layer width-256 tanh MLP, CPU
    python scripts/bench_overhead.py --device cuda --steps 2000
    python scripts/bench_overhead.py --activation gelu     # saturation from phi'(z), not from h
    python scripts/bench_overhead.py --whole-process       # whole processes: `vgp run` vs a bare script
    python scripts/bench_overhead.py --whole-process --busy 1 --steps 100   # ... beside another job
    python scripts/bench_overhead.py --module              # vgp's MLP module against an nn.Sequential
    python scripts/bench_overhead.py --kinds --threads 1   # what each of log.kinds adds to a recorded step

``--whole-process`` times what a user waits for: a hand-written script (the loop below, with its
own model and data code, importing only torch) against ``python -m vgp run`` processes, each from
the start of the interpreter to its exit; the loop's time is what each reports (vgp: ``train_s`` in
meta.json), the rest is time outside the loop (imports, set-up, checks, the files' finish).
``--busy N`` runs N other PyTorch processes meanwhile (small matrix products in a loop, PyTorch's
default threads: "a run beside another job"), and adds the bare script with
``OMP_WAIT_POLICY=PASSIVE`` (waiting OpenMP threads sleep at once) and with ``GOMP_SPINCOUNT=30000``
(they spin a tenth of libgomp's default before they sleep: what `vgp run` sets).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bench_threads import HOG  # another PyTorch job
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
    return timed_steps(model.to(device), F.cross_entropy, d, cfg, device)


def timed_steps(model, criterion, d, cfg: config.Config, device) -> float:
    """Seconds of a hand-written loop: an evaluation (vgp evaluates at step 0 too), then
    cfg.train.steps steps of forward, backward and the config's optimizer on vgp's batch order."""
    opt = OPTIMIZERS.build(cfg.train.optimizer, list(model.parameters()))
    it = batches(len(d.x_train), cfg.train.batch_size, cfg.seed, device)
    t = time.perf_counter()
    evaluate(model, d.x_test, d.y_test, d.task)
    model.train()
    for _ in range(cfg.train.steps):
        idx = next(it)
        loss = criterion(model(d.x_train[idx]), d.y_train[idx])
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


# The bare process: what a person writes by hand for the same net, data shape, batches and optimizer.
BARE_SCRIPT = """
import json, math, sys, time
t0 = time.perf_counter()
import torch
import torch.nn.functional as F
from torch import nn

depth, width, steps, batch = map(int, sys.argv[1:5])
act, seed = sys.argv[5], 0
torch.manual_seed(seed)
g = torch.Generator().manual_seed(seed)
x = torch.randn(8192 + 256, 64, generator=g)  # a random teacher's labels, as vgp's 'teacher' set
y = (torch.tanh(2 * x @ torch.randn(64, 128, generator=g) / 8) @ torch.randn(128, 10, generator=g)).argmax(1)
x = (x - x[:8192].mean(0)) / x[:8192].std(0)
x_train, y_train, x_test, y_test = x[:8192], y[:8192], x[8192:], y[8192:]
layers, fan = [], 64
for _ in range(depth):
    layers += [nn.Linear(fan, width), getattr(nn, {"tanh": "Tanh", "relu": "ReLU", "gelu": "GELU"}[act])()]
    fan = width
model = nn.Sequential(*layers, nn.Linear(fan, 10))
for m in model:
    if isinstance(m, nn.Linear):
        nn.init.xavier_normal_(m.weight)
        nn.init.zeros_(m.bias)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
order = torch.randperm(8192, generator=g)
t = time.perf_counter()
with torch.no_grad():
    F.cross_entropy(model(x_test), y_test)
for step in range(steps):
    i = (step * batch) % (8192 - batch + 1)
    idx = order[i:i + batch]
    loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
print(json.dumps({"loop_s": time.perf_counter() - t, "loss": loss.item()}))
"""


# the bare script again beside busy processes, with these OpenMP settings
BUSY_ENVS = {"bare script, OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
             "bare script, GOMP_SPINCOUNT=30000": {"GOMP_SPINCOUNT": "30000"}}


def whole_process(args) -> None:
    """Interleaved whole processes: the bare script, then `vgp run` at each logging setting; medians."""
    variants = {"bare script": None, "vgp run, every 10th step, all kinds": 10, "vgp run, every step, all kinds": 1}
    if args.busy:
        variants = {"bare script": None, **{name: None for name in BUSY_ENVS},
                    **{k: v for k, v in variants.items() if v is not None}}
    hogs = [subprocess.Popen([sys.executable, "-c", HOG], env={k: v for k, v in os.environ.items() if k not in
                                                              ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")})
            for _ in range(args.busy)]
    try:
        _whole_process(args, variants)
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def _whole_process(args, variants: dict) -> None:
    walls = {name: [] for name in variants}
    loops = {name: [] for name in variants}
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}  # libgomp's defaults
    env.update({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "bare.py").write_text(BARE_SCRIPT)
        for every in (1, 10):
            cfg = config.to_dict(make_cfg(args, every))
            (tmp / f"every{every}.json").write_text(json.dumps(cfg))  # JSON is YAML
        for rep in range(args.repeats + 1):  # the first round warms the file cache and is not counted
            for name, every in variants.items():
                run_env = {**env, **BUSY_ENVS.get(name, {})}
                if every is None:
                    cmd = [sys.executable, str(tmp / "bare.py"), str(args.depth), str(args.width), str(args.steps),
                           str(args.batch_size), args.activation]
                else:
                    cmd = [sys.executable, "-m", "vgp", "run", str(tmp / f"every{every}.json"), "--out",
                           str(tmp / "runs"), "--force", "--quiet"]
                t = time.perf_counter()
                p = subprocess.run(cmd, capture_output=True, text=True, env=run_env, cwd=tmp)
                wall = time.perf_counter() - t
                if p.returncode:
                    raise SystemExit(f"{name} failed:\n{p.stderr}")
                if every is None:
                    loop = json.loads(p.stdout.strip().splitlines()[-1])["loop_s"]
                else:
                    meta = json.loads((Path(p.stdout.strip().splitlines()[-1]) / "meta.json").read_text())
                    loop = meta["train_s"]
                if rep:
                    walls[name].append(wall)
                    loops[name].append(loop)
    base = statistics.median(walls["bare script"])
    print(f"whole processes: {args.depth}-layer width-{args.width} {args.activation} MLP, batch {args.batch_size}, "
          f"{args.steps} steps on {args.device}, median of {args.repeats}"
          f"{f', beside {args.busy} busy process(es)' if args.busy else ''}:")
    print(f"  {'':38s} {'process s':>9s} {'loop s':>7s} {'outside s':>9s}  vs bare")
    for name in variants:
        wall, loop = statistics.median(walls[name]), statistics.median(loops[name])
        outside = statistics.median(w - l for w, l in zip(walls[name], loops[name]))
        print(f"  {name:38s} {wall:9.2f} {loop:7.2f} {outside:9.2f}  {wall / base:5.3f}x")


def report(args, times: dict, base: str, unit: str) -> None:
    """Print each variant's median ms/step and its ratio to variant ``base`` (called ``unit``)."""
    ref = statistics.median(times[base])
    print(f"{args.depth}-layer width-{args.width} {args.activation} MLP, batch {args.batch_size}, "
          f"{args.steps} steps on {args.device} ({torch.get_num_threads()} threads), median of {args.repeats}:")
    width = max(map(len, times))
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:{width}s} {1000 * med / args.steps:6.2f} ms/step  {med / ref:5.3f}x {unit}")


def module(args) -> None:
    """The bare loop around vgp's MLP module and around an nn.Sequential of the same layers (copies
    of the same weights), interleaved: does vgp's module cost more than the plain container?"""
    cfg = make_cfg(args, 1)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    d = datasets.load(cfg.data, cfg.seed).to(device)
    model, _ = build_model(cfg.model, d)
    if cfg.model.norm != "none" or cfg.model.skip:
        raise SystemExit("--module compares plain MLPs (no norm, no skip connections)")
    twin = copy.deepcopy(model)
    plain = nn.Sequential(*[m for b in twin.blocks for m in (b.linear, b.act)], twin.out)
    variants = {"bare loop, vgp's MLP module": model.to(device), "bare loop, nn.Sequential": plain.to(device)}
    times = {name: [] for name in variants}
    for rep in range(args.repeats + 1):  # the first round warms up and is not counted
        for name, net in variants.items():
            t = timed_steps(net, F.cross_entropy, d, cfg, device)
            if rep:
                times[name].append(t)
    report(args, times, "bare loop, nn.Sequential", "nn.Sequential")


# log.kinds recorded on their own by --kinds (a group where one computation serves them all)
KIND_GROUPS = {"weight_grad, bias_grad": ["weight_grad", "bias_grad"], "output_grad": ["output_grad"],
               "weight": ["weight"], "update_ratio (and weight)": ["update_ratio"],
               "act_mean, act_std, saturation, dead": ["act_mean", "act_std", "saturation", "dead"],
               "underflow": ["underflow"], "all ten kinds": None}


def kinds(args) -> None:
    """Each group of log.kinds recorded alone on every step, against recording only the first and last
    step (interleaved, medians): the milliseconds each adds to a recorded step. A group's figure
    includes what every recorded step pays (the host transfer, the CSV rows): the first row."""
    variants = {"only the first and last step": make_cfg(args, 10**9),
                **{name: make_cfg(args, 1, ks) for name, ks in KIND_GROUPS.items()}}
    times = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as out:
        vgp_loop(make_cfg(args, 1), out)  # warm-up
        for _ in range(args.repeats):
            for name, cfg in variants.items():
                times[name].append(vgp_loop(cfg, out))
    base = statistics.median(times["only the first and last step"])
    print(f"{args.depth}-layer width-{args.width} {args.activation} MLP, batch {args.batch_size}, {args.steps} steps "
          f"on {args.device} ({torch.get_num_threads()} threads), median of {args.repeats}; recording every step:")
    width = max(map(len, times))
    for name, ts in times.items():
        med = statistics.median(ts)
        extra = 1000 * (med - base) / (args.steps - 2)  # the baseline records 2 steps too
        print(f"  {name:{width}s} {1000 * med / args.steps:6.2f} ms/step  "
              f"{'' if med == base else f'+{extra:5.2f} ms per recorded step'}  "
              f"(spread {1000 * min(ts) / args.steps:.2f}-{1000 * max(ts) / args.steps:.2f})")


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
    p.add_argument("--whole-process", action="store_true",
                   help="time whole processes: a bare script against `vgp run` (set-up and finish included)")
    p.add_argument("--busy", type=int, default=0,
                   help="--whole-process: run N other PyTorch processes meanwhile (a run beside another job)")
    p.add_argument("--module", action="store_true",
                   help="the bare loop around vgp's MLP module against an nn.Sequential of the same layers")
    p.add_argument("--kinds", action="store_true", help="what each group of log.kinds adds to a recorded step")
    args = p.parse_args()
    if args.whole_process:
        return whole_process(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.module:
        return module(args)
    if args.kinds:
        return kinds(args)
    variants = {  # name: config (None: the bare loop)
        "bare loop": None,
        "vgp, every step, all kinds": make_cfg(args, 1),
        "vgp, every 10th step, all kinds": make_cfg(args, 10),
        "vgp, every step, gradients only": make_cfg(args, 1, GRADS),
        "vgp, every 10th step, gradients only": make_cfg(args, 10, GRADS),
        # steps 0 and the last only: what a step that is not recorded costs (the divergence flag, the loop)
        "vgp, only the first and last step": make_cfg(args, 10**9),
    }
    times = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as out:
        vgp_loop(make_cfg(args, 1), out)  # warm-up: allocator, first-call overheads
        for _ in range(args.repeats):
            for name, cfg in variants.items():
                times[name].append(bare(make_cfg(args, 1)) if cfg is None else vgp_loop(cfg, out))
    report(args, times, "bare loop", "bare")


if __name__ == "__main__":
    main()
