"""Recurrent nets (``rnn``, ``lstm``, ``gru``): unrolled on recorded steps, fused on the others.

Unrolling (cells, not the fused ``nn.RNN``/``nn.LSTM``) is what makes the hidden state h_t of
every step a tensor of its own: the gradient dLoss/dh_t that reaches it is the full one, through
time and from the layer above, not just the share the loss sends to step t directly (which is
all that a hook on a fused layer's output sequence sees). Only recorded steps need that: the
net unrolls while ``hidden_sink`` is set (the recorder sets it from ``start()`` to
``after_backward()``) and otherwise runs the very same parameter tensors through PyTorch's
fused kernels (``torch._VF.lstm``/``gru``/``rnn_tanh``/``rnn_relu``, what ``nn.LSTM`` itself
calls; cuDNN on a GPU). The layouts already agree: each layer's W_ih (G*H, in), W_hh (G*H, H),
b_ih, b_hh in PyTorch's gate order (LSTM i, f, g, o; GRU r, z, n). A vanilla ``rnn`` whose
activation is neither ``tanh`` nor ``relu`` has no fused kernel and always unrolls.
``model.fused = False`` unrolls every step (the reference the fused path is tested against).

``width`` is the hidden size, ``depth`` the number of stacked layers. The vanilla ``rnn``
computes h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh) with any registered activation.
Inputs are (B, T, F); the output is the last step's (B, out) or, with ``per_step``, (B, T, out).
"""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace
from typing import Callable

import torch
from torch import nn

from vgp.activations import Activation
from vgp.activations import tanh as tanh_activation
from vgp.inits import init_tensors, initialize
from vgp.models import Tracked, stacked_parameters

GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # row blocks of W_ih / W_hh (PyTorch's gate order)
FUSED_RNN = {nn.Tanh: "rnn_tanh", nn.ReLU: "rnn_relu"}  # the only fused vanilla RNNs (torch._VF names)

# cuDNN wants every layer's weights in one buffer (nn.LSTM's flatten_parameters); ours are separate
# parameters, so it copies them into one per call (a few hundred kB, small next to T steps) and says so.
warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous",
                        category=UserWarning, module=__name__)


class VanillaLayer(nn.Module):
    def __init__(self, in_size: int, hidden: int, activation: Activation):
        super().__init__()
        self.ih = nn.Linear(in_size, hidden)
        self.hh = nn.Linear(hidden, hidden)
        self.act = activation.module()
        self.hidden = hidden

    def weights(self):
        return (self.ih.weight, self.ih.bias), (self.hh.weight, self.hh.bias)

    def steps(self, x, sink):  # (B, T, F) -> list of T tensors (B, H)
        # (B, T, H): the input part of every step in one matmul; unbound into T (B, H) views, whose
        # gradients autograd stacks once (indexing xw[:, t] would make a (B, T, H) gradient per step)
        xw = self.ih(x).unbind(1)
        h = x.new_zeros(x.shape[0], self.hidden)
        out = []
        for t in range(len(xw)):
            h = self.act(xw[t] + self.hh(h))
            if sink is not None:
                sink(t, h)
            out.append(h)
        return out


class CellLayer(nn.Module):
    def __init__(self, kind: str, in_size: int, hidden: int):
        super().__init__()
        self.cell = (nn.LSTMCell if kind == "lstm" else nn.GRUCell)(in_size, hidden)
        self.kind, self.hidden = kind, hidden

    def weights(self):
        c = self.cell
        return (c.weight_ih, c.bias_ih), (c.weight_hh, c.bias_hh)

    def steps(self, x, sink):
        h = x.new_zeros(x.shape[0], self.hidden)
        c = torch.zeros_like(h)
        out = []
        for t, x_t in enumerate(x.unbind(1)):  # (B, F) views, see VanillaLayer.steps
            if self.kind == "lstm":
                h, c = self.cell(x_t, (h, c))
            else:
                h = self.cell(x_t, h)
            if sink is not None:
                sink(t, h)
            out.append(h)
        return out


class RecurrentNet(nn.Module):
    fused = True  # run the fused kernels when nothing needs the h_t; False: always unroll

    def __init__(self, kind: str, in_size: int, out_size: int, width: int, depth: int, activation: Activation,
                 per_step: bool = False):
        super().__init__()
        sizes = [in_size] + [width] * depth
        self.layers = nn.ModuleList(
            VanillaLayer(a, width, activation) if kind == "rnn" else CellLayer(kind, a, width)
            for a, b in zip(sizes[:-1], sizes[1:])
        )
        self.out = nn.Linear(width, out_size)
        self.kind, self.per_step, self.width = kind, per_step, width
        # the torch._VF function; None: this activation has no fused kernel
        self.fused_op = kind if kind != "rnn" else FUSED_RNN.get(type(self.layers[0].act))
        # set by the recorder on recorded steps: called with (layer from 1, t from 1, h_t)
        self.hidden_sink: Callable[[int, int, torch.Tensor], None] | None = None

    def forward(self, x):  # (B, T, F) -> (B, out) or (B, T, out)
        sink = self.hidden_sink
        if sink is None and self.fused and self.fused_op is not None:
            x = self._fused(x)
            return self.out(x) if self.per_step else self.out(x[:, -1])
        for k, layer in enumerate(self.layers):
            layer_sink = (lambda t, h, k=k: sink(k + 1, t + 1, h)) if sink is not None else None
            hs = layer.steps(x, layer_sink)
            x = torch.stack(hs, 1)  # (B, T, H)
        return self.out(x) if self.per_step else self.out(x[:, -1])

    def _fused(self, x):  # (B, T, F) -> (B, T, H): the last layer's h_t, all layers in one call
        flat = []
        for layer in self.layers:
            (wi, bi), (wh, bh) = layer.weights()
            flat += [wi, wh, bi, bh]  # the order nn.LSTM's _flat_weights has
        h0 = x.new_zeros(len(self.layers), x.shape[0], self.width)
        hx = (h0, h0) if self.kind == "lstm" else h0
        # (input, hx, weights, has_biases, num_layers, dropout, train, bidirectional, batch_first)
        op = getattr(torch._VF, self.fused_op)
        return op(x, hx, flat, True, len(self.layers), 0.0, self.training, False, True)[0]

    def tracked(self) -> list[Tracked]:
        layers = []
        for k, layer in enumerate(self.layers):
            (wi, bi), (wh, bh) = layer.weights()
            layers.append(Tracked(f"layers.{k}.ih", SimpleNamespace(weight=wi, bias=bi), None, output=False))
            layers.append(Tracked(f"layers.{k}.hh", SimpleNamespace(weight=wh, bias=bh), None, output=False))
        return layers + [Tracked("out", self.out, None)]


def recurrent(kind: str, in_shape: tuple, out_size: int, width: int, depth: int, activation: Activation,
              init: dict, bias_init: dict, recurrent_init: dict, forget_bias: float = 1.0,
              per_step: bool = False) -> RecurrentNet:
    """An unrolled RNN/LSTM/GRU on inputs of shape (T, F).

    ``init`` and ``bias_init`` set the input-to-hidden weights (and the output layer),
    ``recurrent_init`` the hidden-to-hidden ones, one gate block at a time (so that, e.g.,
    ``orthogonal`` makes each gate's recurrent matrix orthogonal). ``default`` is PyTorch's
    recurrent default, U(+-1/sqrt(width)). An LSTM's forget-gate bias is ``forget_bias``
    (b_ih) plus zero (b_hh): 1.0 as in Jozefowicz et al. 2015.
    """
    model = RecurrentNet(kind, in_shape[-1], out_size, width, depth, activation, per_step)
    gate_act = activation if kind == "rnn" else tanh_activation()  # what kaiming should assume
    bound = 1 / math.sqrt(width)
    for layer in model.layers:
        (wi, bi), (wh, bh) = layer.weights()
        for w, b, spec in ((wi, bi, init), (wh, bh, recurrent_init)):
            for g in range(GATES[kind]):
                rows = slice(g * width, (g + 1) * width)
                init_tensors(w[rows], b[rows], gate_act, spec, bias_init, default_bound=bound)
        if kind == "lstm":
            with torch.no_grad():
                bi[width:2 * width].fill_(forget_bias)
                bh[width:2 * width].zero_()
    initialize(model.out, gate_act, init, bias_init)
    return model


class StackedRecurrent(nn.Module):
    """K equally shaped ``rnn`` or ``gru`` :class:`RecurrentNet` as one module, for :mod:`vgp.batched`:
    ``weights[i]``/``biases[i]`` stack the members' tensors of their ``tracked()`` entry i (each layer's
    W_ih (K, G*H, in), W_hh (K, G*H, H), then the output layer's (K, out, H)). ``forward`` maps
    (K, B, T, F) to (K, B, out) (or (K, B, T, out) with ``per_step``), unrolled over time with batched
    matrix products: the fused kernels take one weight set, so K members cannot share a call. The
    cell is the members' own: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), and PyTorch's GRU
    (r, z, n gates; n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1 - z) n + z h).

    ``hidden_sink``, as on :class:`RecurrentNet`: called with (layer from 1, t from 1, h_t), h_t as
    (K, H, B), transposed (its norm per member is the same).
    ``taps`` (a list) receives the output layer's pre-activation. An LSTM is not stacked: alone, its
    fused kernel is faster on the CPU than a batched unrolled cell (``scripts/bench_rnn_batched.py``)."""

    def __init__(self, members: list):
        super().__init__()
        first = members[0]
        if first.kind not in ("rnn", "gru"):
            raise ValueError(f"{first.kind}: only rnn and gru nets are stacked")
        self.weights, self.biases = stacked_parameters(members)
        self.kind, self.per_step, self.width, self.depth = first.kind, first.per_step, first.width, len(first.layers)
        self.act = first.layers[0].act if first.kind == "rnn" else None
        self.hidden_sink: Callable[[int, int, torch.Tensor], None] | None = None

    def forward(self, x, taps: list | None = None):  # (K, B, T, F) -> (K, B, out) or (K, B, T, out)
        # on transposed states, h^T = act(W_ih x^T + W_hh h^T + b): each (K, rows, cols) weight's gradient
        # then comes out of the backward pass in its own layout (see StackedMLP), not as T transposed adds
        ws, bs = list(self.weights._parameters.values()), list(self.biases._parameters.values())
        sink = self.hidden_sink
        k, b, steps = x.shape[:3]
        seq = x.permute(0, 3, 2, 1).reshape(k, -1, steps * b)  # (K, F, T B)
        for layer in range(self.depth):
            wi, wh, bi, bh = ws[2 * layer], ws[2 * layer + 1], bs[2 * layer], bs[2 * layer + 1]
            # the input part of every step in one product, unbound into per-step views (see VanillaLayer)
            xw = torch.baddbmm(bi.unsqueeze(2), wi, seq).view(k, -1, steps, b).unbind(2)  # T (K, G H, B)
            h = x.new_zeros(k, self.width, b)
            out = []
            for t in range(steps):
                hw = torch.baddbmm(bh.unsqueeze(2), wh, h)
                if self.kind == "rnn":
                    h = self.act(xw[t] + hw)
                else:
                    xr, xz, xn = xw[t].chunk(3, 1)
                    hr, hz, hn = hw.chunk(3, 1)
                    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
                    n = torch.tanh(xn + r * hn)
                    h = n + z * (h - n)  # (1 - z) n + z h, as PyTorch's GRU cell computes it
                if sink is not None:
                    sink(layer + 1, t + 1, h)
                out.append(h)
            seq = torch.stack(out, 2).view(k, self.width, steps * b)  # (K, H, T B)
        last = seq if self.per_step else out[-1]
        z = torch.baddbmm(bs[-1].unsqueeze(2), ws[-1], last)  # (K, out, B) or (K, out, T B)
        if taps is not None:
            taps.append(z)
        if self.per_step:
            return z.view(k, -1, steps, b).permute(0, 3, 2, 1)  # (K, B, T, out)
        return z.transpose(1, 2)
