"""Optimizers, chosen by short name, with their usual arguments.

Each declares the ranges PyTorch's constructor accepts (or, where PyTorch accepts what makes no
sense for a study, such as a momentum of 1 or more, the sensible ones), so that ``vgp validate``
rejects them with the key's name instead of a run failing at its first step.
"""

from __future__ import annotations

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
