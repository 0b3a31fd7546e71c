"""vgp: an experiment harness for the vanishing (and exploding) gradient problem.

The Python API, for notebooks and scripts (``import vgp`` itself imports neither torch nor pandas;
each name loads its module on first use):

* ``vgp.run(config_or_path, **overrides) -> RunResult``: train one config, as ``vgp run`` does;
* ``vgp.load_run(folder)`` and ``vgp.load_sweep(folder)``: a run's or a sweep's CSVs as pandas
  DataFrames;
* ``vgp.Recorder(model, out=..., every=...)``: record any ``torch.nn.Module`` in your own training
  loop into a run folder that ``vgp diagnose``, ``plot``, ``compare`` and ``report`` read.
"""

__version__ = "0.1.0"

# name -> the module that defines it, imported when the name is first used (PEP 562)
_LAZY = {
    "run": "vgp.api",
    "load_run": "vgp.api",
    "load_sweep": "vgp.api",
    "RunResult": "vgp.api",
    "Recorder": "vgp.recorder",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vgp' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
