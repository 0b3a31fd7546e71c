"""Optimizers, chosen by short name, with their usual arguments."""

from __future__ import annotations

import torch

from vgp.registry import Registry

OPTIMIZERS = Registry("optimizer")


@OPTIMIZERS.register("sgd", "stochastic gradient descent, optionally with (Nesterov) momentum")
def sgd(params, lr: float = 0.1, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


@OPTIMIZERS.register("adam", "Kingma & Ba 2015")
def adam(params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw", "Adam with decoupled weight decay (Loshchilov & Hutter 2019)")
def adamw(params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("rmsprop", "Tieleman & Hinton 2012")
def rmsprop(params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, momentum: float = 0.0,
            weight_decay: float = 0.0):
    return torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=weight_decay)


@OPTIMIZERS.register("adagrad", "Duchi et al. 2011")
def adagrad(params, lr: float = 1e-2, eps: float = 1e-10, weight_decay: float = 0.0):
    return torch.optim.Adagrad(params, lr=lr, eps=eps, weight_decay=weight_decay)
