"""Record a Hugging Face ``Trainer`` run into a vgp run folder: add ``VGPCallback`` to its callbacks.

    from vgp.integrations.hf import VGPCallback
    callback = VGPCallback("results/mygpt", every=10)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    with callback:                      # optional: an exception in train() then marks the folder failed
        trainer.train()                 # then: vgp diagnose results/mygpt; vgp plot results/mygpt

Where it records: in ``on_pre_optimizer_step``, the first hook the Trainer calls after the last
micro-batch's backward, once per optimizer step. The Trainer has already unscaled (fp16) **and
clipped** the gradients there: it clips to ``max_grad_norm`` (1.0 by default) before any hook, so
the recorded gradient norms are those after clipping, which scales every gradient by the same factor
(the ratios between layers are unchanged). To record the unclipped gradients, train with
``max_grad_norm=0`` (no clipping) or clip in your own ``Trainer`` subclass. The activation-gradient
norms (``output_grad``) are taken during backward and are never clipped.

``pip install 'vgp[hf]'``.
"""

from __future__ import annotations

try:
    from transformers import TrainerCallback
except ImportError:
    raise ImportError("vgp.integrations.hf needs transformers: pip install 'vgp[hf]'") from None
if not hasattr(TrainerCallback, "on_pre_optimizer_step"):  # older releases have no hook between backward and step
    raise ImportError("vgp.integrations.hf needs a transformers whose TrainerCallback has on_pre_optimizer_step: "
                      "pip install -U 'vgp[hf]'")

import torch

import vgp
from vgp.integrations import finish, loss_scale


class VGPCallback(TrainerCallback):
    """Records the Trainer's model with :class:`vgp.Recorder` into the run folder ``out``.

    ``every``: record every this many optimizer steps (0, every, 2 * every, ...); other keyword
    arguments go to :class:`vgp.Recorder` unchanged (``optimizer`` defaults to the Trainer's, for the
    learning rate in metrics.csv).

    * Starts in ``on_train_begin`` and finishes the folder in ``on_train_end``. The Trainer has no
      hook for an exception: use the callback as a context manager around ``trainer.train()`` so
      that the folder then says failed (interrupted on Ctrl-C); without it, a crashed run's folder
      stays unfinished ('running').
    * With ``gradient_accumulation_steps=k``, one record per optimizer step (k micro-batches).
    * The loss of a recorded step is the model's own ``loss`` output, read by a forward hook on the
      model in training mode: the mean over the step's micro-batches (the sum where the Trainer
      passed ``num_items_in_batch``, as each micro-batch's loss is then already divided by the
      step's count of labels; that count is taken before a causal LM shifts the labels, so the loss,
      like the gradients, is what the Trainer backpropagates, slightly below the mean per token
      unless the first label of each sequence is -100). A model that returns no ``loss`` (a custom ``compute_loss``) records
      ``None`` as the loss.
    * Multi-GPU: records on the world's process zero only, after the gradients were all-reduced
      (DDP). Sharded setups (FSDP, DeepSpeed ZeRO) hold a shard of each parameter per process; the
      norms recorded there would be a shard's, so do not use it with them.
    * Recorded steps count from 0 at each ``train()``, also when it resumes from a checkpoint.
    """

    def __init__(self, out, every: int = 10, **recorder_kwargs):
        self.out = out
        self.every = every
        self.recorder_kwargs = recorder_kwargs
        self._rec = None  # the entered vgp.Recorder, on process zero while training runs
        self._hook = None  # the forward hook that reads the loss
        self._losses = []  # the model's loss of each micro-batch since the last optimizer step, 0-d tensors
        self._summed = False  # whether those losses add up to the step's loss (num_items_in_batch given)

    # --- the Trainer's hooks

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self._rec is not None:  # an earlier train() raised outside `with callback:`
            self._finish(RuntimeError("trainer.train() ended without on_train_end, and train() began again"))
        if not state.is_world_process_zero:
            return
        precision = "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"  # underflow's threshold
        rec = vgp.Recorder(model, out=self.out, every=self.every,
                           **{"optimizer": optimizer, "precision": precision, **self.recorder_kwargs})
        rec.__enter__()
        self._rec, self._losses = rec, []
        self._hook = model.register_forward_hook(self._keep_loss, with_kwargs=True)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self._rec is None:
            return
        losses, self._losses = self._losses, []
        loss = None
        if losses:
            loss = torch.stack(losses).sum()
            if not self._summed:
                loss = loss / len(losses)
        # fp16's GradScaler (on accelerate's optimizer wrapper): the output gradients the hooks saw are S times
        # the true ones
        self._rec.step(loss, scale=loss_scale(self._rec, getattr(kwargs.get("optimizer"), "scaler", None)))

    def on_train_end(self, args, state, control, **kwargs):
        self._finish(None)

    # --- `with callback: trainer.train()`

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self._finish(exc)
        return False

    # --- helpers

    def _keep_loss(self, module, inputs, kwargs, output):
        if not (module.training and torch.is_grad_enabled()):
            return  # evaluation, generation
        loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._losses.append(loss.detach().reshape(()))
            self._summed = kwargs.get("num_items_in_batch") is not None

    def _finish(self, exception: BaseException | None) -> None:
        rec, hook, self._rec, self._hook, self._losses = self._rec, self._hook, None, None, []
        if hook is not None:
            hook.remove()
        finish(rec, exception)
