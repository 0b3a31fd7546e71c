"""The gallery: the classic vanishing/exploding-gradient results, reproduced and measured by vgp.

Each :class:`Entry` is one paper's claim: a sweep file in ``configs/gallery/`` (its header comment
names the paper, the claim and the command), a ``measure`` function that reads the finished runs and
says, with numbers, whether the claim held, and the figures ``vgp plot`` draws for it.
:func:`run` trains the entries' sweeps (resumable: finished runs are kept) and :func:`write_doc`
turns what the run folders hold into ``docs/gallery.md``; ``vgp gallery [NAME...] [--quick]`` does
both. Nothing in the page is written by hand: regenerating it reads the run folders again.

Entries live in the modules of this package, grouped by subject, each registered with
:func:`register`; ``ENTRIES`` maps a name to its entry, in the gallery's order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from vgp.errors import UserError
from vgp.registry import did_you_mean

# where the entries' sweep files are: configs/gallery/ beside the package in a clone
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "gallery"


@dataclass(frozen=True)
class Figure:
    """One figure of an entry, drawn by :func:`vgp.plots.plot` from the entry's sweep folder.

    ``name``: the file's stem (``docs/gallery/<entry>-<name>.png``); ``kind``: a ``vgp plot`` kind;
    ``options``: the other keyword arguments of :func:`vgp.plots.plot` (``x``, ``y``, ``hue``, ``col``,
    ``row``, ``where`` (a list of ``KEY=VALUE``), ``steps``, ``target_loss``); ``caption``: one sentence
    under it saying what to look at."""

    name: str
    kind: str
    caption: str
    options: dict = field(default_factory=dict)


@dataclass
class Finding:
    """What ``measure`` found in an entry's runs.

    * ``held``: whether the paper's claim held here (``True``/``False``);
    * ``measured``: one or two sentences with the deciding numbers (markdown);
    * ``table``: the numbers behind them, a markdown table with each row's seeds and spread
      (mean ± std, or geometric mean ×/÷ geometric std for ratios);
    * ``numbers``: the deciding numbers by name, for the tests;
    * ``why``: where the claim did not hold (or held only in part), why, at this scale."""

    held: bool
    measured: str
    table: str
    numbers: dict = field(default_factory=dict)
    why: str = ""


@dataclass(frozen=True)
class Entry:
    """One classic result.

    ``number``: its place in the gallery (1-based); ``name``: short, lower-case, hyphenated, what
    ``vgp gallery NAME`` takes, and ``configs/gallery/<name>.yaml`` is its sweep file; ``title``: the
    heading (``"He et al. 2015: Xavier against He init in deep ReLU nets"``); ``quick``: sweep
    overrides (the ``vgp sweep`` grammar, ``key=a,b`` for an axis) giving a reduced size that still
    shows the claim's direction, what ``--quick`` and the tests run; ``measure``: reads the finished
    sweep (a :class:`vgp.api.Sweep` holding exactly this expansion's runs) and returns a
    :class:`Finding`, raising nothing for a claim that does not hold; ``figures``: drawn after it."""

    number: int
    name: str
    title: str
    quick: tuple[str, ...]
    measure: Callable
    figures: tuple[Figure, ...] = ()

    @property
    def config(self) -> Path:
        return CONFIGS / f"{self.name}.yaml"

    def header(self) -> dict[str, str]:
        """The sweep file's header comment: ``paper``, ``claim`` and ``run`` from its ``# Paper:``,
        ``# Claim:`` and ``# Run:`` lines (a line indented under one continues it), ``notes`` the rest."""
        return read_header(self.config)


ENTRIES: dict[str, Entry] = {}


def register(entry: Entry) -> Entry:
    """Add ``entry`` to ``ENTRIES`` (kept in the order of ``entry.number``); returns it."""
    if entry.name in ENTRIES:
        raise ValueError(f"gallery entry {entry.name!r} registered twice")
    ENTRIES[entry.name] = entry
    ordered = sorted(ENTRIES.values(), key=lambda e: e.number)
    ENTRIES.clear()
    ENTRIES.update((e.name, e) for e in ordered)
    return entry


_FIELD = re.compile(r"#\s*(Paper|Claim|Run):\s*(.*)$")


def read_header(path: Path) -> dict[str, str]:
    """The leading comment block of a gallery sweep file, split into ``paper``, ``claim``, ``run`` and
    ``notes`` (the other comment lines, joined). Raises UserError where one of the three is missing."""
    out, notes, current = {}, [], None
    for line in Path(path).read_text().splitlines():
        if not line.startswith("#"):
            break
        m = _FIELD.match(line)
        if m:
            current = m.group(1).lower()
            out[current] = m.group(2).strip()
        elif current and re.match(r"#\s{3,}\S", line):
            out[current] += " " + line[1:].strip()
        else:
            current = None
            text = line[1:].strip()
            if text:
                notes.append(text)
    missing = [k for k in ("paper", "claim", "run") if k not in out]
    if missing:
        raise UserError(f"{path}: the header comment lacks {', '.join('# ' + k.title() + ':' for k in missing)}")
    out["notes"] = " ".join(notes)
    return out


def entries(names=()) -> list[Entry]:
    """The entries named (all, in order, for none); UserError for an unknown name, with a suggestion."""
    _load()
    if not names:
        return list(ENTRIES.values())
    out = []
    for n in names:
        if n not in ENTRIES:
            raise UserError(f"unknown gallery entry {n!r}{did_you_mean(n, ENTRIES)}; "
                            f"the entries: {', '.join(ENTRIES)}")
        out.append(ENTRIES[n])
    return out


def _load() -> None:
    import importlib

    for module in MODULES:
        importlib.import_module(f"vgp.gallery.{module}")


# the modules that register entries, by subject
MODULES: tuple[str, ...] = ("feedforward", "normalization", "phase", "recurrent", "transformer")


def run(names=(), quick: bool = False, jobs: int | None = None, out: Path | None = None, doc: Path | None = None,
        train: bool = True, quiet: bool = False, say=None) -> Path:
    """``vgp gallery``: train the named entries' missing runs (all for none; ``quick``: their reduced sizes),
    measure every entry whose folder holds runs, and write the page (``doc``). Returns the page's path.

    ``out`` defaults to ``results/gallery`` (``results/gallery-quick`` with ``quick``), ``doc`` to
    ``docs/gallery.md`` for the default full run when every entry has finished runs to measure, and
    to ``<out>/gallery.md`` otherwise (``quick``, another ``out``, or entries without runs, as in a
    fresh clone after ``vgp gallery NAME``: the published page is not replaced by one that says
    "not run yet" for entries measured elsewhere). ``say``: where progress lines go (default:
    standard error). Raises UserError for an unknown entry name."""
    import sys
    import time

    from vgp.gallery import build, doc as docmod
    from vgp.launch import local

    say = say or (lambda m: print(m, file=sys.stderr, flush=True))
    chosen = {e.name for e in entries(names)}
    published = out is None and not quick  # only the default full run writes the published page
    out = Path(out) if out is not None else Path("results") / ("gallery-quick" if quick else "gallery")
    for e in ENTRIES.values():  # every header readable before anything trains
        e.header()
    outcomes = []
    for i, e in enumerate(ENTRIES.values(), 1):
        t0 = time.perf_counter()
        trains = train and e.name in chosen
        o = build.run_entry(e, out, quick=quick, jobs=jobs, train=trains, quiet=quiet)
        if trains:
            docmod.save_time(out, e.name, o.train_s, o.runs, jobs or local.cores())
        verdict = "no runs yet" if o.finding is None else ("held" if o.finding.held else "not held")
        say(f"[{i}/{len(ENTRIES)}] {e.name}: {o.finished}/{o.runs} runs, {verdict} "
            f"({time.perf_counter() - t0:.0f} s)")
        outcomes.append(o)
    if doc is None:
        unrun = [o.entry.name for o in outcomes if o.finding is None]
        doc = Path("docs") / "gallery.md" if published and not unrun else out / "gallery.md"
        if published and unrun:
            say(f"{len(unrun)} of {len(outcomes)} entries have no finished runs in {out} ({', '.join(unrun)}): "
                f"the page goes to {doc}, not docs/gallery.md (--doc docs/gallery.md to write it there anyway)")
    return docmod.write(outcomes, Path(doc), out, quick)
