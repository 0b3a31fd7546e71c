"""Optimizers, chosen by short name, with their usual arguments.

Each declares the ranges PyTorch's constructor accepts (or, where PyTorch accepts what makes no
sense for a study, such as a momentum of 1 or more, the sensible ones), so that ``vgp validate``
rejects them with the key's name instead of a run failing at its first step.
"""

from __future__ import annotations

import math

from vgp.registry import LazyModule, Registry

torch = LazyModule("torch")  # imported on first use: vgp ls needs no torch

OPTIMIZERS = Registry("optimizer")

_ADAM_RANGES = {"lr": "(0, inf)", "betas": "[0, 1)", "eps": "[0, inf)", "weight_decay": "[0, inf)"}


def _nesterov(args: dict) -> str | None:
    if args["nesterov"] and args["momentum"] <= 0:
        return "nesterov: true needs a momentum > 0 (PyTorch's rule), got momentum 0"
    return None


@OPTIMIZERS.register("sgd", "stochastic gradient descent, optionally with (Nesterov) momentum",
                     ranges={"lr": "(0, inf)", "momentum": "[0, 1)", "weight_decay": "[0, inf)"}, rule=_nesterov)
def sgd(params, lr: float = 0.1, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


@OPTIMIZERS.register("adam", "Kingma & Ba 2015", ranges=_ADAM_RANGES)
def adam(params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw", "Adam with decoupled weight decay (Loshchilov & Hutter 2019)", ranges=_ADAM_RANGES)
def adamw(params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("rmsprop", "Tieleman & Hinton 2012",
                     ranges={"lr": "(0, inf)", "alpha": "[0, 1)", "eps": "[0, inf)", "momentum": "[0, 1)",
                             "weight_decay": "[0, inf)"})
def rmsprop(params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, momentum: float = 0.0,
            weight_decay: float = 0.0):
    return torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=weight_decay)


@OPTIMIZERS.register("adagrad", "Duchi et al. 2011", ranges={"lr": "(0, inf)", "eps": "[0, inf)",
                                                            "weight_decay": "[0, inf)"})
def adagrad(params, lr: float = 1e-2, eps: float = 1e-10, weight_decay: float = 0.0):
    return torch.optim.Adagrad(params, lr=lr, eps=eps, weight_decay=weight_decay)


# Layer-wise trust-ratio optimizers, from pytorch-optimizer (an optional extra: `import vgp` and the
# other optimizers do not need it). Their formulas are the library's own, not copied here.
LIBRARY = "pytorch_optimizer"
INSTALL = "pip install 'vgp[optim]' (or: pip install pytorch-optimizer)"


def _installed(args: dict) -> str | None:
    import importlib.util

    if importlib.util.find_spec(LIBRARY) is None:
        return f"this optimizer comes from pytorch-optimizer, which is not installed here; {INSTALL}"
    return None


def _library():
    try:
        import pytorch_optimizer
    except ImportError as e:
        from vgp.errors import UserError

        raise UserError(f"train.optimizer: lamb and lars come from pytorch-optimizer, which cannot be imported "
                        f"({e}); {INSTALL}") from None
    return pytorch_optimizer


@OPTIMIZERS.register("lamb", "You et al. 2020: Adam's update times a per-tensor trust ratio ||W|| / ||update|| "
                             "(||W|| clamped to 10; pytorch-optimizer's Lamb: the first moment's bias corrected in the step "
                             "size, the second's not)",
                     ranges=_ADAM_RANGES, rule=_installed)
def lamb(params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0):
    return _library().Lamb(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("lars", "You et al. 2017: SGD with momentum, each weight's step scaled by trust_coefficient "
                             "||W|| / (||g|| + weight_decay ||W||), so lr 1 moves a weight by about 1/1000 of its "
                             "norm (pytorch-optimizer's LARS; biases and scalars plain SGD)",
                     ranges={"lr": "(0, inf)", "momentum": "[0, 1)", "weight_decay": "[0, inf)",
                             "trust_coefficient": "(0, inf)"}, rule=lambda args: _installed(args) or _nesterov(args))
def lars(params, lr: float = 1.0, momentum: float = 0.9, weight_decay: float = 0.0, trust_coefficient: float = 1e-3,
         nesterov: bool = False):
    return _library().LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           trust_coefficient=trust_coefficient, nesterov=nesterov)


# The state each keeps per parameter, in parameter-sized tensors (for vgp.preflight's memory estimate).
def state_copies(spec: dict) -> int:
    """How many parameter-sized tensors the optimizer of a resolved spec keeps."""
    name = spec["name"]
    if name == "sgd":
        return 1 if spec["momentum"] > 0 else 0
    if name in ("adam", "adamw", "lamb"):
        return 2
    if name == "lars":
        return 1 if spec["momentum"] > 0 else 0
    if name == "rmsprop":
        return 1 + (spec["momentum"] > 0)
    return 1  # adagrad


# -- learning-rate schedules -------------------------------------------------------------------------
#
# A schedule is built with the optimizer and the run's ``train.steps`` and stepped once after each
# optimizer step, so that update s (0-based) uses lr(s) below, where lr is the optimizer's lr. The
# closed forms are written out in LambdaLR factors rather than chained from LinearLR,
# CosineAnnealingLR and SequentialLR: those compute each step's lr from the previous one (the
# "chainable" form), which drifts by rounding and has had off-by-one errors at SequentialLR's
# milestones; a factor of s is exact and is what the tests compare with. Step decay is torch's StepLR
# (lr * gamma ** (s // step_size)). Which arguments fit train.steps is checked by vgp.config.

SCHEDULES = Registry("schedule")


def warmup_factor(s: int, warmup_steps: int, start_factor: float) -> float:
    """The linear warm-up's factor at step s: start_factor at s = 0, rising linearly to 1 at s =
    warmup_steps, then 1 (Goyal et al. 2017, "Accurate, large minibatch SGD", section 2.2)."""
    if s >= warmup_steps:
        return 1.0
    return start_factor + (1.0 - start_factor) * s / warmup_steps


@SCHEDULES.register("constant", "the optimizer's lr at every step")
def constant(opt, steps: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


@SCHEDULES.register("warmup", "linear warm-up from start_factor * lr at step 0 to lr at step warmup_steps, "
                              "then constant (Goyal et al. 2017)",
                    ranges={"warmup_steps": "[0, inf)", "start_factor": "[0, 1]"})
def warmup(opt, steps: int, warmup_steps: int = 100, start_factor: float = 0.0):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_factor(s, warmup_steps, start_factor))


@SCHEDULES.register("warmup_cosine", "linear warm-up, then cosine decay from lr to min_lr at step train.steps "
                                     "(Loshchilov & Hutter 2017, SGDR, without restarts)",
                    ranges={"warmup_steps": "[0, inf)", "start_factor": "[0, 1]", "min_lr": "[0, inf)"})
def warmup_cosine(opt, steps: int, warmup_steps: int = 100, start_factor: float = 0.0, min_lr: float = 0.0):
    """lr(s) = warm-up for s < W, then min_lr + (lr - min_lr) (1 + cos(pi (s - W) / (steps - W))) / 2:
    lr at s = W, min_lr at s = steps (the final evaluation's row). Needs W < steps."""
    def factor(s: int, base: float) -> float:
        if s < warmup_steps:
            return warmup_factor(s, warmup_steps, start_factor)
        t = min(s - warmup_steps, steps - warmup_steps) / (steps - warmup_steps)
        return (min_lr + (base - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))) / base

    return torch.optim.lr_scheduler.LambdaLR(opt, [lambda s, b=g["lr"]: factor(s, b) for g in opt.param_groups])


@SCHEDULES.register("step", "multiply the lr by gamma every step_size steps: lr * gamma ** (s // step_size)",
                    ranges={"step_size": "[1, inf)", "gamma": "(0, 1]"})
def step(opt, steps: int, step_size: int = 100, gamma: float = 0.1):
    return torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma)


def schedule_problem(spec: dict, steps: int, lr: float | None) -> tuple[str, str] | None:
    """(argument, what is wrong) where a resolved schedule spec does not fit a run of ``steps`` steps
    with the optimizer's ``lr``, else None."""
    name = spec["name"]
    w = spec.get("warmup_steps")
    if name == "warmup" and w > steps:
        return "warmup_steps", f"{w} is more than train.steps ({steps}); use at most {steps}"
    if name == "warmup_cosine" and w >= steps:
        return "warmup_steps", f"{w} leaves no steps to decay over (train.steps is {steps}); use less than {steps}"
    if name == "warmup_cosine" and lr is not None and spec["min_lr"] > lr:
        return "min_lr", f"{spec['min_lr']:g} is above the optimizer's lr ({lr:g}); the decay goes down to it"
    if name == "step" and spec["step_size"] > steps:
        return "step_size", f"{spec['step_size']} is more than train.steps ({steps}): the lr would never decay"
    return None
