"""The gallery's phase-diagram entry (Schoenholz et al. 2017): its sweep file, and its quick size run
end to end, with the claim's direction asserted on the measured numbers."""

import pytest

from vgp import sweep as sweepmod
from vgp.gallery import build, entries


def entry():
    return entries(["phase-diagram"])[0]


def test_the_sweep_file_validates_and_names_paper_claim_and_command():
    e = entry()
    full, quick = sweepmod.load(e.config), build.expansion(e, quick=True)
    assert len(full.cells) == 32 and len(quick.cells) == 6
    header = e.header()
    assert "Schoenholz" in header["paper"] and "xi_c" in header["claim"]
    assert "vgp gallery phase-diagram" in header["run"]
    assert {c.cfg.model.depth for c in quick.cells} == {10, 80}


@pytest.mark.slow
def test_quick_nets_train_deepest_at_the_critical_weight_variance(tmp_path):
    o = build.run_entry(entry(), tmp_path, quick=True, jobs=2)
    assert o.finished == o.runs == 6
    n = o.finding.numbers
    assert n["critical_sigma_w2"] == pytest.approx(1.76, abs=0.01)
    assert n["deepest"][1.76] == 80  # the critical net trains at the deepest depth
    assert n["deepest_near_critical"] >= 2 * n["deepest_far"]  # and far deeper than the ordered or chaotic ones
    assert n["six_xi_c"][1.0] < 80 and n["six_xi_c"][4.0] < 80 < n["six_xi_c"][1.76]
    assert n["agreement_6xi"] >= 0.75
    assert o.finding.held
    for path, caption in build.draw(o, tmp_path / "figures"):
        assert path.stat().st_size > 10_000 and caption
