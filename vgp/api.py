"""The Python API: train a config, and read run and sweep folders as pandas DataFrames.

    import vgp
    result = vgp.run("configs/quickstart.yaml", model__depth=10, train__steps=50, out="results/api")
    result.grad_table("output_grad")          # steps x layers
    sweep = vgp.load_sweep("results/activation-init-depth")
    sweep.compare(by=["depth"], where={"activation": "relu"})

The same library as the command line, without it: ``vgp.run`` is ``vgp run``, ``load_run`` reads what
``vgp diagnose`` reads (:func:`vgp.analysis.read_run`), ``load_sweep`` what ``vgp compare`` reads
(:func:`vgp.study.load`). Overrides use the one grammar, ``section.key=value``, spelt as keyword
arguments with ``__`` for the dot (``model__depth=40`` is ``model.depth=40``), or as a mapping
(``overrides={"model.init.gain": 1.2}``).

**Errors.** Every mistake a user can fix raises :class:`vgp.errors.UserError`, or its subclasses
:class:`~vgp.errors.ConfigError` (a config, key, value or override) and :class:`~vgp.errors.DataError`
(a data set), with the one-line message the command line prints, reworded where it named a
command-line flag (``--force`` becomes ``force=True``, ``--where`` becomes ``where=``). A run that
fails while training (out of memory, a full disk) raises what PyTorch or the OS raised; its folder
says ``failed`` and holds ``error.txt``. What the command line prints as ``vgp: warning:`` lines
(a damaged run left out of a sweep) are Python warnings of category :class:`VgpWarning`.

This module imports pandas when first used, and torch only when :func:`run` trains.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vgp import analysis
from vgp.errors import UserError

__all__ = ["run", "load_run", "load_sweep", "RunResult", "Run", "Sweep", "VgpWarning"]


class VgpWarning(UserWarning):
    """A run left out of a sweep because its folder cannot be read, keys mixed inside a compared row."""


# -- messages without command-line flags -------------------------------------------------------

# (pattern, replacement): what the library's messages say to a command-line user, said to a caller
_REWORDS = [
    (r"use --force to overwrite it", "pass force=True to overwrite it"),
    (r"\(see --out or 'out' in the config\)", "(see out= or 'out' in the config)"),
    (r"\(name=\.\.\.\) or --out", "(name=...) or another out="),
    (r"; run it with: vgp sweep (\S+)", r"; run it as a sweep, and read its results with vgp.load_sweep"),
    (r"; run it with: vgp run (\S+)", r"; train it with vgp.run(\1)"),
    (r"\ba vgp run folder\b", "a run folder written by vgp"),
    (r"try one with vgp run", "try one with vgp.run"),
    (r"--metrics ([^:]+): config keys, not summary columns; group by them with --by",
     r"metrics \1: config keys, not summary columns; group by them with by="),
    (r"group by them with --by, or keep one value with --where", "group by them with by=, or keep one value with where="),
    (r"\(vgp ls (\w+)\)", r"(vgp.config lists the \1)"),
]
# what is left: '--where depth=7: ...' -> 'where depth=7: ...', '--jobs' -> 'jobs='
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z-]*)( ?)")


def _plain(message: str) -> str:
    """A library message reworded for a Python caller: no command-line flag, no ``vgp`` command."""
    for pattern, repl in _REWORDS:
        message = re.sub(pattern, repl, message)
    message = _FLAG.sub(lambda m: m.group(1).replace("-", "_") + (" " if m.group(2) else "="), message)
    message = re.sub(r"(?<![\w-])-o\b", "out=", message)
    return re.sub(r"\bvgp (run|sweep|compare|plot|report|diagnose|theory|validate|ls)\b", r"the \1 command", message)


@contextlib.contextmanager
def _plain_errors():
    """Re-raise the library's UserError (same class) with a message for Python callers."""
    try:
        yield
    except UserError as e:
        try:
            plain = type(e)(_plain(str(e)))
        except Exception:  # a subclass with another constructor
            plain = UserError(_plain(str(e)))
        raise plain from None


def _warn(message: str) -> None:
    warnings.warn(_plain(message), VgpWarning, stacklevel=3)


# -- training one config -----------------------------------------------------------------------

@dataclass
class RunResult:
    """What :func:`run` returns: where the run was written and how it ended, with its files loaded
    on first use.

    * ``folder``: the run folder, ``<out>/<name>/``;
    * ``status``: ``completed`` or ``diverged`` (a diverged run is a result, not an error);
    * ``summary``: ``summary.csv``'s row as a dict, as :func:`load_run` reads it (:class:`Run`);
    * ``run``: the folder read by :func:`load_run` (a :class:`Run`), and through it ``grads``,
      ``metrics``, ``time``, ``config``, ``meta`` and :meth:`grad_table`, documented there.
    """

    folder: Path
    status: str
    summary: dict
    _run: "Run | None" = field(default=None, repr=False, compare=False)

    @property
    def run(self) -> "Run":
        if self._run is None:
            self._run = load_run(self.folder)
        return self._run

    @property
    def grads(self) -> pd.DataFrame:
        return self.run.grads

    @property
    def metrics(self) -> pd.DataFrame:
        return self.run.metrics

    @property
    def time(self) -> pd.DataFrame | None:
        return self.run.time

    @property
    def config(self) -> dict:
        return self.run.config

    @property
    def meta(self) -> dict | None:
        return self.run.meta

    def grad_table(self, kind: str = "output_grad") -> pd.DataFrame:
        return self.run.grad_table(kind)


def _yaml_text(value) -> str | None:
    """``value`` as override text that parses back to exactly ``value`` (None if it would not)."""
    import yaml

    from vgp import config

    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, allow_unicode=True)
    except yaml.YAMLError:
        return None
    text = text.removesuffix("\n...\n").strip()
    try:
        back = config.parse_overrides([f"k={text}"])[0][1]
    except UserError:
        return None
    return text if yaml.safe_dump(back) == yaml.safe_dump(value) else None


def _override_list(overrides: Mapping | None, keywords: dict) -> list[str] | list[tuple[str, Any]]:
    """``key=value`` texts (blamed as ``override key=value`` in messages, as on the command line),
    or ``(key, value)`` pairs where a value has no exact YAML spelling."""
    pairs = [(str(k), v) for k, v in (overrides or {}).items()]
    pairs += [(k.replace("__", "."), v) for k, v in keywords.items()]
    texts = [_yaml_text(v) for _, v in pairs]
    if all(t is not None for t in texts):
        return [f"{k}={t}" for (k, _), t in zip(pairs, texts)]
    return pairs


def run(config_or_path, /, *, out: str | Path | None = None, force: bool = False, quiet: bool = True,
        overrides: Mapping | None = None, **keywords) -> RunResult:
    """Train one config and write its run folder, as ``vgp run`` does; returns a :class:`RunResult`.

    ``config_or_path``: a YAML config file (str or Path), a mapping of config keys (what the YAML
    holds), or a :class:`vgp.config.Config`. Overrides: keyword arguments with ``__`` for the dot
    (``model__depth=40``, ``model__init__gain=1.2``, ``seed=3``), and/or ``overrides={"model.depth": 40}``;
    values are Python values (``model__init={"name": "orthogonal", "gain": 1.2}``). A file's run is named
    after the file unless the config or an override says ``name``. ``out``: the results folder (default:
    the config's ``out``). ``force``: overwrite a finished run of the same name. ``quiet``: no progress
    bar (the default here).

    Raises :class:`vgp.errors.ConfigError` for a bad config or override (``unknown key 'model.depht';
    did you mean 'model.depth'?``), :class:`vgp.errors.UserError` for a folder holding a finished run
    without ``force``, or one another run is writing."""
    from vgp import config
    from vgp.train import run as train_run

    over = _override_list(overrides, keywords)
    with _plain_errors():
        if isinstance(config_or_path, (str, Path)):
            path = Path(config_or_path)
            if over and not isinstance(over[0], str):  # pairs: load's own steps, with pairs
                raw = config.read_yaml(path)
                raw.setdefault("name", path.stem)
                cfg = config.from_dict(raw, over, source=f"{path} (overrides)")
            else:
                cfg = config.load(path, over)
        elif isinstance(config_or_path, config.Config):
            cfg = config_or_path if not over else config.from_dict(config.to_dict(config_or_path), over)
        elif isinstance(config_or_path, Mapping):
            cfg = config.from_dict(dict(config_or_path), over)
        else:
            raise TypeError(f"vgp.run: expected a config file path, a mapping or a vgp.config.Config, "
                            f"got {type(config_or_path).__name__}")
        result = train_run(cfg, out=out, force=force, quiet=quiet)
    folder = Path(result.folder)
    with _plain_errors():  # the row as load_run reads it (empty cells NaN), not training's own dict
        summary = analysis.read_csv(folder / "summary.csv", **analysis.SCHEMAS["summary.csv"]).iloc[0].to_dict()
    return RunResult(folder, result.status, summary)


# -- reading one run ---------------------------------------------------------------------------

@dataclass
class Run(analysis.Run):
    """A run folder's files (:func:`load_run`). A finished run reads the CSVs under their names; an
    unfinished one (running, killed, failed, interrupted) the rows its ``*.csv.partial`` files hold,
    less a last step cut short.

    * ``folder`` (Path), ``name`` (the config's name);
    * ``config``: ``config.yaml``, the fully resolved config as nested dicts;
    * ``meta``: ``meta.json`` (status, versions, device, host, start and end times), None if missing;
    * ``grads``: ``grad_norms.csv``, one row per recorded step, layer and kind: ``step`` (int, the
      optimizer step: the weights before update ``step``), ``layer`` (int, 1 = the input layer, the
      last = the output layer), ``name`` (str, the module's name), ``kind`` (str: ``weight_grad``,
      ``bias_grad`` (Frobenius norms of dLoss/dW, dLoss/db before clipping), ``output_grad`` (norm of
      dLoss/dz over the batch, z the layer's pre-activation), ``weight`` (norm of W), ``update_ratio``
      (norm of the step's change of W over norm of W), ``underflow`` (fraction of dLoss/dW's entries
      that are zero or below the smallest normal number of train.precision, in the loss-scaled
      backward pass), and for hidden layers ``act_mean``, ``act_std``, ``saturation``, ``dead``
      (fractions)), ``value`` (float; 0 where float32 underflowed);
    * ``metrics``: ``metrics.csv``, one row per recorded step: ``step``, ``loss`` and ``acc`` (of the
      batch), ``grad_norm`` and ``grad_norm_clipped`` (total gradient norm before and after clipping),
      ``clipped`` (whether clipping changed it), ``lr`` (the lr that step's update used), ``elapsed_s`` (seconds since training began),
      ``test_loss`` and ``test_acc`` (evaluation steps only, else NaN; the final evaluation after the
      last update is step ``train.steps``), ``loss_scale`` (fp16's loss scale at that step, 1 without
      one) and ``skipped`` (updates the loss scaler skipped since the previous row, this one included);
    * ``time``: ``time_grads.csv`` of recurrent nets, ``step``, ``layer``, ``t`` (time step, 1-based),
      ``value`` (norm of dLoss/dh_t); None for other nets;
    * ``summary``: ``summary.csv``'s one row as a dict (the flattened config as dotted keys,
      ``status``, ``steps_done``, ``final_loss``, ``final_test_loss``, ``final_test_acc``,
      ``grad_ratio``, ``diverged_step``, ``wall_s``, ``decay_per_layer``, ``decay_per_layer_last``,
      ``decay_per_step``, ``verdict``, ``verdict_last``, ...); None while the run is unfinished;
    * ``status``: ``completed`` or ``diverged`` when finished, else what ``meta.json`` says
      (``running``, ``failed``, ``interrupted``), or ``unfinished``; ``finished``: whether
      ``summary.csv`` exists (the completion marker); ``partial``: the files read from ``.partial``.
    """

    # the fields, name and finished are those of vgp.analysis.Run, which read_run fills

    @property
    def status(self) -> str:
        if self.finished:
            return str(self.summary.get("status"))
        said = (self.meta or {}).get("status")
        return said if isinstance(said, str) and said not in ("completed", "diverged") else "unfinished"

    def grad_table(self, kind: str = "output_grad") -> pd.DataFrame:
        """One kind of ``grads`` as a wide table: one row per recorded step (index ``step``), one column
        per layer (``1`` .. output layer). ``run.grad_table("output_grad").loc[0]`` is the profile at
        step 0 whose shrinking toward layer 1 is the vanishing gradient."""
        kinds = sorted(self.grads["kind"].astype(str).unique())
        if kind not in kinds:
            from vgp.registry import did_you_mean

            raise UserError(f"{self.folder}: no kind {kind!r} recorded{did_you_mean(kind, kinds)} "
                            f"(recorded: {', '.join(kinds)})")
        g = self.grads[self.grads["kind"] == kind]
        table = g.pivot(index="step", columns="layer", values="value")
        table.columns.name = "layer"
        return table

    def time_table(self, layer: int | None = None) -> pd.DataFrame:
        """Recurrent nets: ``time`` of one layer (default: the last recurrent layer) as a wide table,
        one row per recorded step, one column per time step ``t``."""
        if self.time is None or self.time.empty:
            raise UserError(f"{self.folder}: no time_grads.csv (only recurrent nets record dLoss/dh_t)")
        layer = int(self.time["layer"].max()) if layer is None else layer
        t = self.time[self.time["layer"] == layer]
        if t.empty:
            raise UserError(f"{self.folder}: no layer {layer} in time_grads.csv "
                            f"(layers: {', '.join(map(str, sorted(self.time['layer'].unique())))})")
        return t.pivot(index="step", columns="t", values="value")


def load_run(folder: str | Path) -> Run:
    """Read a run folder (from :func:`run`, ``vgp run``, or a sweep's ``runs/<id>/``) into a :class:`Run`.

    Raises :class:`vgp.errors.UserError` naming the file and what is wrong for a missing folder, a
    folder with no recorded step yet, or a file that cannot be read as what vgp writes."""
    with _plain_errors():
        r = analysis.read_run(folder)
    return Run(r.folder, r.config, r.grads, r.metrics, r.time, r.summary, r.meta, tuple(r.partial))


# -- reading a sweep ---------------------------------------------------------------------------

class _Runs(Mapping):
    """Run id (the run's folder name) -> :class:`Run`, each read on first access and kept."""

    def __init__(self, folders: dict[str, Path]):
        self._folders = folders
        self._loaded: dict[str, Run] = {}

    def __getitem__(self, key: str) -> Run:
        if key not in self._folders:
            from vgp.registry import did_you_mean

            raise KeyError(f"no run {key!r} in this sweep{did_you_mean(key, list(self._folders))}")
        if key not in self._loaded:
            self._loaded[key] = load_run(self._folders[key])
        return self._loaded[key]

    def __iter__(self):
        return iter(self._folders)

    def __len__(self) -> int:
        return len(self._folders)

    def __repr__(self) -> str:
        return f"<{len(self)} runs: {', '.join(list(self._folders)[:3])}{', ...' if len(self) > 3 else ''}>"


def _where_list(where) -> list[str]:
    """``{"depth": 20}`` or ``["depth=20"]`` or ``"depth=20"`` -> ``["depth=20"]``."""
    if isinstance(where, str):
        return [where]
    if isinstance(where, Mapping):
        return [f"{k}={v}" for k, v in where.items()]
    return [str(w) for w in where]


def _key_list(keys) -> list[str] | None:
    if keys is None:
        return None
    return [k.strip() for k in keys.split(",") if k.strip()] if isinstance(keys, str) else list(keys)


class Sweep:
    """A sweep folder read by :func:`load_sweep`.

    * ``folder`` (Path);
    * ``table``: one row per run (finished or not), the columns of ``summary.csv``: the config flattened
      to dotted keys (``model.depth``, ``model.activation.name``, ``train.optimizer.lr``; empty where
      the run's architecture does not use the key), the summary columns (:attr:`Run.summary`), ``status``
      (``completed``, ``diverged``, ``failed``, ``interrupted``, ``running``, ``unfinished``) and
      ``folder`` (the run folder, a str); ``name`` is the run id;
    * ``axes``: what the sweep varied, each axis a list of ``table`` columns that move together (its
      ``grid`` keys one each, its ``zip`` keys as one axis); ``axis_columns`` the same, flat. Seeds are
      never an axis;
    * ``runs``: run id -> :class:`Run`, each folder read on first access;
    * :meth:`compare`: ``vgp compare``'s table; :meth:`grads`, :meth:`metrics`, :meth:`time`: every
      run's files as one long DataFrame with a ``run`` column (the run id), read once, on first use.
    """

    def __init__(self, folder: Path, study):
        self.folder = folder
        self._study = study
        self.table: pd.DataFrame = study.table
        self.axes: list[list[str]] = [list(a) for a in study.axes]
        folders = self.table["folder"] if "folder" in self.table else pd.Series([], dtype=object)
        self.runs = _Runs({Path(f).name: Path(f) for f in folders if isinstance(f, str) and f})
        self._files = None

    @property
    def axis_columns(self) -> list[str]:
        return [c for a in self.axes for c in a]

    def __repr__(self) -> str:
        return f"<vgp.Sweep {self.folder}: {len(self.table)} runs, axes {self.axis_columns}>"

    def compare(self, by=None, where=(), metrics=None) -> pd.DataFrame:
        """One row per configuration, its runs (seeds) aggregated: what ``vgp compare`` prints.

        ``by``: keys to group by (short names work: ``depth``, ``activation``, ``lr``), default the
        sweep's axes; ``where``: keep matching runs, ``{"activation": "relu", "lr": 1e-3}`` or
        ``["activation=relu"]`` (numbers compared by value); ``metrics``: summary columns (default
        ``final_test_acc``, ``final_test_loss``, ``final_loss``, ``grad_ratio``, ``decay_per_layer``,
        ``decay_per_step``, ``steps_done`` where present).

        Columns: the grouped keys; ``n`` (runs in the row), ``diverged``, ``failed`` (failed,
        interrupted, damaged or unfinished runs); per metric ``<m>_gmean`` and ``<m>_gsd`` (ratios and
        decay rates: geometric mean and geometric standard deviation, a factor) or ``<m>_mean`` and
        ``<m>_std``, over the row's finished runs with finite values. ``attrs`` holds ``by``,
        ``metrics``, ``mixed`` (keys that differ inside a row, also a :class:`VgpWarning`), ``runs``,
        ``seeds``. Raises UserError for an unknown key or a ``where`` no run matches."""
        from vgp import compare as comparemod

        with _plain_errors():
            return comparemod.compare([self.folder], by=_key_list(by), metrics=_key_list(metrics),
                                      where=_where_list(where), warn=_warn, loaded=self._study)

    def _read(self):
        if self._files is None:
            from vgp import rundata

            with _plain_errors():
                self._files = rundata.read(self.table, warn=_warn)
        return self._files

    def _long(self, frame: pd.DataFrame) -> pd.DataFrame:
        ids = {i: Path(f).name for i, f in zip(self.table.index, self.table["folder"])}
        out = frame.copy()
        out["run"] = out["run"].map(ids)
        return out[["run"] + [c for c in out.columns if c != "run"]].reset_index(drop=True)

    def grads(self, kinds=("output_grad", "weight_grad")) -> pd.DataFrame:
        """Every run's ``grad_norms.csv`` in one frame: ``run`` (the run id, a key of ``runs`` and the
        ``name`` column of ``table``), ``step``, ``layer``, ``kind``, ``value`` (:attr:`Run.grads`).
        ``output_grad`` and ``weight_grad`` are read for all runs in one parse; other ``kinds``
        (``None``: all) are read run by run, and add the ``name`` column. Folders that cannot be read
        are left out, each with a :class:`VgpWarning`. Merge with ``table`` on ``run`` = ``name`` for
        config columns."""
        from vgp import rundata

        if kinds is not None and set(kinds) <= set(rundata.GRAD_KINDS):
            g = self._long(self._read().grads)
            return g[g["kind"].isin(list(kinds))].reset_index(drop=True)
        frames = []
        for run_id in self.runs:
            try:
                g = self.runs[run_id].grads
            except UserError as e:
                _warn(f"{e}; left out")
                continue
            g = g if kinds is None else g[g["kind"].isin(list(kinds))]
            frames.append(g.assign(run=run_id))
        cols = ["run", "step", "layer", "name", "kind", "value"]
        return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)

    def metrics(self) -> pd.DataFrame:
        """Every run's ``metrics.csv`` in one frame: ``run`` (the run id) and :attr:`Run.metrics`'s columns."""
        return self._long(self._read().metrics)

    def time(self) -> pd.DataFrame:
        """Every recurrent run's ``time_grads.csv`` in one frame: ``run``, ``step``, ``layer``, ``t``,
        ``value`` (no rows when no run is recurrent)."""
        return self._long(self._read().time)


def load_sweep(folder: str | Path) -> Sweep:
    """Read a sweep folder (``<out>/<name>/`` of ``vgp sweep``, with ``runs/`` and ``summary.csv``),
    or any folder of run folders (several :func:`run` calls with the same ``out``), into a :class:`Sweep`.

    Raises :class:`vgp.errors.UserError` for a missing folder, a file, a single run folder (read it with
    :func:`load_run`) or a folder that holds no run."""
    from vgp import study

    folder = Path(folder)
    with _plain_errors():
        if folder.is_file():
            raise UserError(f"{folder}: a file, not a sweep folder")
        if analysis.is_run_folder(folder):
            raise UserError(f"{folder}: a run folder, not a sweep folder; read it with vgp.load_run")
        if folder.is_dir() and not (folder / "runs").is_dir() and \
                not any(analysis.is_run_folder(q) for q in folder.iterdir()):
            raise UserError(f"{folder}: not a sweep folder (no runs/ in it) nor a folder of run folders")
        s = study.load([folder], warn=_warn)
    return Sweep(folder, s)
