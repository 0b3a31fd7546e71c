"""The gallery's machinery (vgp/gallery/__init__.py, build.py, doc.py, `vgp gallery`) on a tiny entry of
its own, every registered entry's sweep file, and entry 10 (Xiong et al. 2020) at its quick size. The
other entries' claims are tested in tests/test_gallery_<subject>.py."""

import json
import math
import re
from pathlib import Path

import pytest

from vgp import gallery
from vgp.errors import UserError
from vgp.gallery import build

HEADER = """# Paper: Tester & Checker 2020, "On tiny nets"
# Claim: a deeper sigmoid net's gradients
#    shrink more toward the input.
# Run:   vgp gallery tiny-entry
# A note on the set-up.
"""


def _tiny_entry(tmp_path, monkeypatch, base):
    """Register a one-off entry (two depths, two seeds, 3 steps) whose sweep file lies in tmp_path."""
    monkeypatch.setattr(gallery, "CONFIGS", tmp_path / "configs")
    monkeypatch.setattr(gallery, "ENTRIES", {})
    monkeypatch.setattr(gallery, "MODULES", ())
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny-entry.yaml").write_text(HEADER + f"""name: tiny-entry
base: {base}
fixed: {{train.steps: 3, model.width: 16, log.every: 1, data.n_train: 64, data.n_test: 32, train.batch_size: 32}}
grid:
  model.depth: [3, 8]
seeds: [0, 1]
""")

    def measure(sweep):
        t = sweep.table.groupby("model.depth")["grad_ratio"].apply(lambda v: math.exp(v.map(math.log).mean()))
        shallow, deep = float(t.iloc[0]), float(t.iloc[-1])
        return gallery.Finding(deep < shallow, f"ratio {shallow:.3g} at depth 3, {deep:.3g} at depth 8",
                               "| depth | ratio |\n|--:|--:|\n" + "\n".join(f"| {d} | {v:.3g} |" for d, v in t.items()),
                               {"shallow": shallow, "deep": deep}, "")

    return gallery.register(gallery.Entry(1, "tiny-entry", "Tester & Checker 2020: tiny nets", ("seed=0",), measure,
                                          (gallery.Figure("profile", "profile", "Gradient by layer at step 0.",
                                                          {"hue": "model.depth", "steps": [0]}),)))


def test_header_fields_continuations_and_notes(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text(HEADER + "name: x\n# not the header\n")
    h = gallery.read_header(p)
    assert h == {"paper": 'Tester & Checker 2020, "On tiny nets"',
                 "claim": "a deeper sigmoid net's gradients shrink more toward the input.",
                 "run": "vgp gallery tiny-entry", "notes": "A note on the set-up."}


def test_header_without_claim_names_file_and_field(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("# Paper: A 2020\n# Run: vgp gallery x\nname: x\n")
    with pytest.raises(UserError, match=r"x\.yaml: the header comment lacks # Claim:"):
        gallery.read_header(p)


def test_unknown_entry_is_an_error_with_a_suggestion():
    with pytest.raises(UserError, match=r"unknown gallery entry 'transformer-warmpu'; did you mean "
                                        r"'transformer-warmup'\?"):
        gallery.entries(["transformer-warmpu"])


@pytest.mark.parametrize("name", [e.name for e in gallery.entries()])
def test_every_entry_sweep_file_loads_in_full_and_quick(name):
    """Every registered entry: its header has the three fields (Run names the entry), its file is a sweep
    named after it whose cells all validate, and the quick size is a smaller sweep."""
    e = gallery.entries([name])[0]
    h = e.header()
    assert f"vgp gallery {name}" in h["run"] and "--quick" in h["run"] and h["paper"] and h["claim"]
    full, quick = build.expansion(e), build.expansion(e, quick=True)
    assert full.name == quick.name == name == e.config.stem
    assert 2 <= len(quick.cells) < len(full.cells)
    assert len({e.number for e in gallery.entries()}) == len(gallery.entries())


def test_gallery_trains_measures_draws_and_writes_the_page(tmp_path, monkeypatch):
    from conftest import ROOT

    entry = _tiny_entry(tmp_path, monkeypatch, ROOT / "configs" / "quickstart.yaml")
    out, doc, lines = tmp_path / "results", tmp_path / "docs" / "gallery.md", []
    assert gallery.run(out=out, doc=doc, jobs=2, quiet=True, say=lines.append) == doc
    assert re.fullmatch(r"\[1/1\] tiny-entry: 4/4 runs, held \(\d+ s\)", lines[0])
    page = doc.read_text()
    assert "**Claim.** A deeper sigmoid net's gradients shrink more toward the input." in page
    assert "**Paper.** Tester & Checker 2020" in page and "**Held**." in page
    assert "| 1 | [Tester & Checker 2020: tiny nets](#entry-1) | **held** | 4/4 |" in page
    assert "![Gradient by layer at step 0.](gallery/tiny-entry-profile.png)" in page
    assert (tmp_path / "docs" / "gallery" / "tiny-entry-profile.png").stat().st_size > 10_000
    assert f"vgp sweep configs/gallery/tiny-entry.yaml --out {out}" in page
    times = json.loads((out / "gallery-times.json").read_text())
    assert times["tiny-entry"]["runs"] == 4 and times["tiny-entry"]["wall_s"] > 0
    # the numbers on the page are the runs': recompute the ratios from the run folders
    o = build.run_entry(entry, out, train=False)
    assert o.finished == 4 and f"{o.finding.numbers['deep']:.3g}" in page

    # a second call trains nothing (the run folders are kept as they are) and writes the same verdicts
    stamps = {p: p.stat().st_mtime_ns for p in (out / "tiny-entry" / "runs").glob("*/summary.csv")}
    gallery.run(out=out, doc=doc, jobs=2, quiet=True, say=lines.append)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert "| **held** | 4/4 |" in doc.read_text()


def test_the_published_page_is_written_only_when_every_entry_has_runs(tmp_path, monkeypatch):
    """The default full run writes docs/gallery.md, but not from a results folder where an entry has
    no runs (a fresh clone after `vgp gallery NAME` or `--no-train`): that page goes to
    results/gallery/gallery.md, and the message says why and how to write it anyway."""
    from conftest import ROOT

    _tiny_entry(tmp_path, monkeypatch, ROOT / "configs" / "quickstart.yaml")
    monkeypatch.chdir(tmp_path)
    lines = []
    page = gallery.run(jobs=2, quiet=True, train=False, say=lines.append)
    assert page == Path("results", "gallery", "gallery.md") and page.exists() and not Path("docs").exists()
    assert lines[-1] == ("1 of 1 entries have no finished runs in results/gallery (tiny-entry): the page goes to "
                         "results/gallery/gallery.md, not docs/gallery.md (--doc docs/gallery.md to write it there "
                         "anyway)")
    assert gallery.run(jobs=2, quiet=True, say=lines.append) == Path("docs", "gallery.md")  # trained: every entry
    assert "| **held** | 4/4 |" in Path("docs", "gallery.md").read_text()


def test_quick_goes_to_its_own_folder_and_page_and_unrun_entries_are_listed(tmp_path, monkeypatch):
    from conftest import ROOT

    _tiny_entry(tmp_path, monkeypatch, ROOT / "configs" / "quickstart.yaml")
    monkeypatch.chdir(tmp_path)
    page = gallery.run(quick=True, jobs=1, quiet=True, train=False, say=lambda m: None)
    assert page == tmp_path.joinpath("results", "gallery-quick", "gallery.md").relative_to(tmp_path)
    text = page.read_text()
    assert "| not run yet | 0/2 |" in text and "**Not run yet.** `vgp gallery tiny-entry --quick` runs it (2 runs)." in text
    assert not (tmp_path / "docs").exists()
    # another --out writes its own page too: only the default full run rewrites docs/gallery.md
    page = gallery.run(out=tmp_path / "elsewhere", jobs=1, quiet=True, train=False, say=lambda m: None)
    assert page == tmp_path / "elsewhere" / "gallery.md" and not (tmp_path / "docs").exists()


def test_cli_lists_entries_and_rejects_unknown_names(cli):
    r = cli("gallery", "--list")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^10  transformer-warmup\s+Xiong et al\. 2020", r.stdout, re.M)
    r = cli("gallery", "no-such-entry", "--no-train", "-o", "/nonexistent/x")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unknown gallery entry 'no-such-entry'" in r.stderr


@pytest.mark.slow
def test_xiong_post_ln_needs_warmup_pre_ln_does_not(tmp_path):
    """Entry 10 at its quick size (6 blocks, Adam 4e-3, 150 steps, seed 0): post-LN's MLP weight gradients
    grow toward the output at init and pre-LN's do not; post-LN stays at the no-memory baseline without
    warm-up and learns with it; pre-LN learns without."""
    o = build.run_entry(gallery.entries(["transformer-warmup"])[0], tmp_path, quick=True, jobs=2)
    n = o.finding.numbers
    assert o.finished == 4
    assert n["post_init_ratio"] > 1.2 and n["pre_init_ratio"] < 0.8
    assert n["post_constant_rel"] > 0.97  # at the baseline (2.74): it learned nothing
    assert n["post_warmup_rel"] < 0.8 and n["pre_constant_rel"] < 0.8
    assert o.finding.held
    files = build.draw(o, tmp_path / "fig")
    assert len(files) == 2 and all(p.stat().st_size > 10_000 for p, _ in files)


def test_a_held_claim_with_a_caveat_says_so():
    from vgp.gallery import doc

    assert doc._verdict(gallery.Finding(True, "", "")) == "**Held**"
    assert doc._verdict(gallery.Finding(True, "", "", why="only in part")) == "**Held**, with a caveat"
    assert doc._verdict(gallery.Finding(False, "", "", why="too few steps")) == "**Not held**"
    assert doc._sentence("only in part: x") == "Only in part: x."
