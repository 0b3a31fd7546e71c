"""Record a Lightning run into a vgp run folder: add ``VGPCallback`` to the Trainer's callbacks.

    from vgp.integrations.lightning import VGPCallback
    trainer = lightning.Trainer(max_steps=1000, callbacks=[VGPCallback("results/mynet", every=10)])
    trainer.fit(model, loader)          # then: vgp diagnose results/mynet; vgp plot results/mynet

Where it records: in ``on_before_optimizer_step``, which Lightning calls once per optimizer step,
after the last micro-batch's backward, after AMP's ``GradScaler`` has unscaled the gradients and
before Lightning clips them (``gradient_clip_val``): the same place as ``rec.step`` in a loop of
your own. With ``accumulate_grad_batches=k`` that is once per k batches, with the gradients of all k
summed as the optimizer sees them.

Works with ``lightning`` (``pip install 'vgp[lightning]'``) or, where only that is installed, with
the older ``pytorch_lightning`` package.
"""

from __future__ import annotations

try:
    from lightning.pytorch import Callback
except ImportError:
    try:
        from pytorch_lightning import Callback
    except ImportError:
        raise ImportError("vgp.integrations.lightning needs Lightning: pip install 'vgp[lightning]'") from None

import vgp
from vgp.integrations import finish, loss_scale

# Lightning's precision settings -> the precision of the backward pass, for underflow (vgp.Recorder)
_PRECISIONS = {"16-mixed": "fp16", "16-true": "fp16", "16": "fp16", "bf16-mixed": "bf16", "bf16-true": "bf16",
               "bf16": "bf16"}


class VGPCallback(Callback):
    """Records ``trainer.fit``'s LightningModule with :class:`vgp.Recorder` into the run folder ``out``.

    ``every``: record every this many optimizer steps (0, every, 2 * every, ...); other keyword
    arguments go to :class:`vgp.Recorder` unchanged (``optimizer`` defaults to the first one, for the
    learning rate in metrics.csv).

    * Starts in ``on_train_start`` (after the sanity-check validation, so its forwards are not
      recorded) and finishes the folder in ``on_train_end``; an exception in ``fit`` reaches
      ``on_exception`` and the folder says failed (interrupted on Ctrl-C).
    * The loss of a recorded step is the loss Lightning backpropagated, read in
      ``on_before_backward``: with gradient accumulation, the sum over the micro-batches of each
      loss divided by ``accumulate_grad_batches``, i.e. their mean.
    * With several optimizers (manual optimization), it records at the first optimizer's step only.
    * Multi-GPU (DDP): records on global rank 0 only, after the all-reduce, so the gradients are those
      of the whole batch. Sharded strategies (FSDP, DeepSpeed) hold a shard of each parameter per
      rank; the norms recorded there would be a shard's, so do not use it with them.
    """

    def __init__(self, out, every: int = 10, **recorder_kwargs):
        self.out = out
        self.every = every
        self.recorder_kwargs = recorder_kwargs
        self._rec = None  # the entered vgp.Recorder, on rank 0 while training runs
        self._loss = None  # the loss backpropagated since the last optimizer step, a 0-d tensor

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        kwargs = {"optimizer": trainer.optimizers[0] if trainer.optimizers else None,
                  "precision": _PRECISIONS.get(str(trainer.precision), "fp32"), **self.recorder_kwargs}
        rec = vgp.Recorder(pl_module, out=self.out, every=self.every, **kwargs)
        rec.__enter__()
        self._rec, self._loss = rec, None

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if self._rec is not None:
            loss = loss.detach()
            self._loss = loss if self._loss is None else self._loss + loss

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._rec is None or optimizer is not trainer.optimizers[0]:
            return
        loss, self._loss = self._loss, None
        # 16-mixed's GradScaler: the output gradients the hooks saw are S times the true ones
        self._rec.step(loss, scale=loss_scale(self._rec, getattr(trainer.precision_plugin, "scaler", None)))

    def on_train_end(self, trainer, pl_module) -> None:
        self._finish(None)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._finish(exception)

    def _finish(self, exception: BaseException | None) -> None:
        rec, self._rec, self._loss = self._rec, None, None
        finish(rec, exception)
