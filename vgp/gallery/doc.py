"""``docs/gallery.md``: the gallery's page, written from the run folders alone.

Each entry gets the paper and the claim (from its sweep file's header), what vgp measured (its
:class:`~vgp.gallery.Finding`), whether the claim held and, where not, why, its figures (drawn anew),
and the commands that reproduce it. The training time of each entry is what the last ``vgp gallery``
call that trained it measured, kept in ``<out>/gallery-times.json``."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

from vgp.gallery import build
from vgp.results import atomic_write

TIMES = "gallery-times.json"


def read_times(out: Path) -> dict:
    """{entry name: {"quick": bool, "wall_s": float, "runs": int, "jobs": int}} from ``<out>/gallery-times.json``."""
    path = Path(out) / TIMES
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def save_time(out: Path, name: str, wall_s: float, runs: int, jobs: int) -> None:
    """Record that ``name``'s missing runs (``runs`` of them) took ``wall_s`` seconds with ``jobs`` workers."""
    times = read_times(out)
    times[name] = {"wall_s": round(wall_s, 1), "runs": runs, "jobs": jobs}
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write(Path(out) / TIMES, json.dumps(times, indent=1, sort_keys=True) + "\n")


def _machine() -> str:
    import torch

    from vgp import __version__

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"vgp {__version__}, PyTorch {torch.__version__}, Python {platform.python_version()}, "
            f"{cores} CPU cores ({platform.processor() or platform.machine()}), {gpu}")


def _rel(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def write(outcomes: list[build.Outcome], doc: Path, out: Path, quick: bool) -> Path:
    """Write the page for ``outcomes`` (every entry, in order; an entry with no finished run is listed as
    not run yet) to ``doc``, its figures into ``<doc's folder>/gallery/``. Returns ``doc``."""
    doc = Path(doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    figdir = doc.parent / "gallery"
    times = read_times(out)
    held = [o for o in outcomes if o.finding is not None and o.finding.held]
    measured = [o for o in outcomes if o.finding is not None]
    total = sum(times.get(o.entry.name, {}).get("wall_s", 0.0) for o in measured)
    lines = [
        "# The gallery: classic vanishing- and exploding-gradient results, measured by vgp",
        "",
        "<!-- Written by `vgp gallery`; edits are lost when it runs again. -->",
        "",
        f"Each section is one paper's claim, reproduced at a size this machine trains in minutes, with what vgp "
        f"measured beside it. Every number, verdict and figure below is read from the run folders in "
        f"`{out}/` (one sweep per entry); nothing is written by hand, and `vgp gallery` writes this page again "
        f"from them{' (this page: the reduced `--quick` sizes)' if quick else ''}.",
        "",
        f"- **Claims held:** {len(held)} of the {len(measured)} measured"
        + (f" ({len(outcomes) - len(measured)} not run yet)" if len(measured) < len(outcomes) else "")
        + (f"; {sum(bool(o.finding.why) for o in held)} of them with a caveat, given in its section"
           if any(o.finding.why for o in held) else "") + ".",
        f"- **Machine:** {_machine()}.",
        f"- **Time:** {_minutes(total)} of training wall time for these entries, as `vgp gallery` measured it "
        f"(every core busy; finished runs are kept, so a second call only draws and writes).",
        f"- **Written:** {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.",
        "- **Reproduce everything:** `vgp gallery` (add `--quick` for the reduced sizes the tests run, a few "
        "minutes); one entry: `vgp gallery NAME`.",
        "",
        "| # | result | claim held | runs | training |",
        "|--:|---|---|--:|--:|",
    ]
    for o in outcomes:
        verdict = "not run yet" if o.finding is None else _verdict(o.finding).lower()
        t = times.get(o.entry.name, {}).get("wall_s")
        lines.append(f"| {o.entry.number} | [{o.entry.title}](#{_anchor(o.entry)}) | {verdict} | "
                     f"{o.finished}/{o.runs} | {_minutes(t) if t is not None else '-'} |")
    for o in outcomes:
        lines += ["", *_section(o, doc, figdir, quick)]
    atomic_write(doc, "\n".join(lines) + "\n")
    return doc


def _verdict(f) -> str:
    """**Held**, **Held**, with a caveat (a held claim whose finding says what did not fully hold), or
    **Not held**."""
    if not f.held:
        return "**Not held**"
    return "**Held**, with a caveat" if f.why else "**Held**"


def _sentence(text: str) -> str:
    """``text`` with a capital first letter and a full stop at the end."""
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?", ")")) else text + "."


def _anchor(entry) -> str:
    return f"entry-{entry.number}"


def _section(o: build.Outcome, doc: Path, figdir: Path, quick: bool) -> list[str]:
    e, h = o.entry, o.entry.header()
    config = Path("configs") / "gallery" / e.config.name
    cmd = f"vgp gallery {e.name}" + (" --quick" if quick else "")
    out = [f'<a id="{_anchor(e)}"></a>', f"## {e.number}. {e.title}", "",
           f"**Paper.** {h['paper']}", "", f"**Claim.** {_sentence(h['claim'])}", ""]
    if o.finding is None:
        return out + [f"**Not run yet.** `{cmd}` runs it ({o.runs} runs).", ""]
    f = o.finding
    out += [f"**Measured** ({o.finished} runs). {f.measured}", "",
            f"{_verdict(f)}." + (f" {_sentence(f.why)}" if f.why else ""), "", f.table, ""]
    for path, caption in build.draw(o, figdir):
        out += [f"![{caption}]({_rel(path, doc.parent)})", "", f"*{caption}*", ""]
    if h["notes"]:
        out += [f"**Set-up.** {h['notes']}", ""]
    overrides = "".join(f" '{q}'" if " " in q else f" {q}" for q in e.quick) if quick else ""
    out += [f"**Reproduce.** `{cmd}` (the sweep `{config}`; its runs: `{o.folder}`). The same runs by hand: "
            f"`vgp sweep {config}{overrides} --out {o.folder.parent}`, then `vgp compare {o.folder}` and "
            f"`vgp plot {o.folder}`.", ""]
    return out
