"""Callbacks that record a run folder from a training framework's own loop, one module per framework:

* ``vgp.integrations.lightning.VGPCallback``: a Lightning ``Callback`` (``pip install 'vgp[lightning]'``);
* ``vgp.integrations.hf.VGPCallback``: a Hugging Face ``transformers.TrainerCallback``
  (``pip install 'vgp[hf]'``).

Each wraps :class:`vgp.Recorder`: it enters the recorder when training starts, calls ``step`` once per
optimizer step and exits when training ends (or fails). Importing this package imports neither
framework; importing a module of it without its framework raises ImportError with the pip command.
"""


def finish(rec, exception: BaseException | None) -> None:
    """Exit ``rec`` (a :class:`vgp.Recorder`, or None when it never started) as a ``with`` block would:
    completed, or failed/interrupted by ``exception``."""
    if rec is None:
        return
    if exception is None:
        rec.__exit__(None, None, None)
    else:
        rec.__exit__(type(exception), exception, exception.__traceback__)


def loss_scale(rec, scaler) -> float | None:
    """The loss scale of this step's backward pass, for ``rec.step(loss, scale=...)``: ``scaler`` (a
    ``torch.amp.GradScaler`` or None) where it is enabled and ``rec`` records this step, else None.
    Read before the optimizer step, which is when the scaler updates it; the frameworks have
    unscaled the parameters' gradients by then, but not the output gradients the hooks saw."""
    if scaler is None or not scaler.is_enabled() or not rec.recording(rec.steps_done):
        return None
    return scaler.get_scale()  # a host number: one synchronisation, on recorded steps only
