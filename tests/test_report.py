"""vgp report: one self-contained HTML page for a run, runs or a sweep. Its structure is read back with
html.parser; a headless chromium (where installed) loads it offline and must see no console error, no
network request, every figure drawn and a screenshot that is not blank."""

import base64
import csv
import io
import json
import os
import re
import select
import shutil
import subprocess
import time
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import tiny, vgp_cli
from vgp import config, plots, report, sweep as sweepmod
from vgp.errors import UserError
from vgp.launch import run_cell
from vgp.train import run

EVIL = "<script>alert(1)</script>"
GROUPS = {("tanh", 2), ("tanh", 3), ("relu", 2), ("relu", 3)}  # activation x depth; 2 seeds each
KINDS = {"profile", "heatmap", "training", "summary"}  # what plots.plot draws for an MLP sweep


def make_sweep(root: Path) -> Path:
    """A real sweep folder made by the sweep machinery in this process: 2 activations x 2 depths x 2 seeds."""
    spec = {"name": "s", "base": tiny(train__steps=3), "grid": {"model.activation": ["tanh", "relu"],
                                                                 "model.depth": [2, 3]}, "seeds": [0, 1]}
    path = root / "s.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    sw = sweepmod.load(path)
    folder = root / "out" / sw.name
    sweepmod.write_spec(sw, folder)
    for cell in sw.cells:
        assert run_cell(cell.cfg, folder / "runs").status == "completed"
    sweepmod.write_summary(folder, [c.id for c in sw.cells])
    return folder


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The sweep and its report (written once for the tests that only read it)."""
    root = tmp_path_factory.mktemp("report")
    folder = make_sweep(root)
    out = report.write([folder], root / "sweep.html", warn=lambda m: None)
    return folder, out


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    return run(config.from_dict(tiny(name="one", train__steps=3)), out=root, quiet=True).folder


# -- reading the page back -----------------------------------------------------------------------

class Page(HTMLParser):
    """The parts of a report the tests look at: tables (rows of cell texts, by class), figures
    (figcaption -> number of <svg> inside), <pre> texts, every tag name and all text."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tables, self.figures, self.pres, self.tags, self.text = {}, {}, [], Counter(), []
        self._table = self._row = self._cell = self._figure = self._pre = None
        self._caption = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags[tag] += 1
        if tag == "table":
            self._table = self.tables.setdefault(a.get("class") or f"table{len(self.tables)}", [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "figure":
            self._figure = ["", 0]
        elif tag == "figcaption":
            self._caption = True
        elif tag == "svg" and self._figure is not None:
            self._figure[1] += 1
        elif tag == "pre":
            self._pre = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "figcaption":
            self._caption = False
        elif tag == "figure":
            self.figures[self._figure[0]] = self._figure[1]
            self._figure = None
        elif tag == "pre":
            self.pres.append("".join(self._pre))
            self._pre = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._caption:
            self._figure[0] += data.strip()
        if self._pre is not None:
            self._pre.append(data)


def edit(summary: Path, **values) -> None:
    """Set columns of a run's one-row summary.csv."""
    with open(summary, newline="") as f:
        (row,) = list(csv.DictReader(f))
    with open(summary, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row), lineterminator="\n")
        w.writeheader()
        w.writerow({**row, **values})


def rows(page: Page, cls: str) -> list[dict]:
    head, *body = page.tables[cls]
    return [dict(zip(head, r)) for r in body]


# -- content ---------------------------------------------------------------------------------------

def test_sweep_report_has_one_row_per_group_with_its_runs(swept):
    folder, out = swept
    page = Page(out.read_text())
    table = rows(page, "comparison")
    assert {(r["activation"], int(r["depth"])) for r in table} == GROUPS and len(table) == len(GROUPS)
    assert all(r["n"] == "2" for r in table) and "failed" not in table[0]  # shown only where some run failed
    assert all(re.fullmatch(r"\S+ ×/÷ \S+", r["decay_per_layer"]) for r in table)  # geometric, over the 2 seeds
    diagnosis = rows(page, "diagnosis")
    assert [(r["activation"], r["depth"]) for r in diagnosis] == [(r["activation"], r["depth"]) for r in table]
    for r in diagnosis:  # every run's verdict counted: '2/2 healthy', or '1/2 healthy 1/2 vanishing'
        counts = re.findall(r"(\d+)/2 (vanishing|exploding|healthy)", r["verdict, step 0"])
        assert sum(int(k) for k, _ in counts) == 2
    text = " ".join(" ".join(page.text).split())
    assert "8 runs" in text and "8 completed" in text and "no run diverged or failed" in text
    axes = {r[0]: r[1] for r in page.tables["axes"]}
    assert axes["activation"] == "relu · tanh" and axes["depth"] == "2 · 3" and axes["seed"].startswith("0 · 1")
    held = {r[0]: r[1] for r in page.tables["constant"][1:]}  # the <details> table of keys held fixed
    assert held["model.width"] == "16" and held["train.steps"] == "3" and "model.depth" not in held


def test_every_figure_kind_is_inlined_once_with_unique_ids(swept):
    folder, out = swept
    text = out.read_text()
    page = Page(text)
    assert set(page.figures) == KINDS and all(n == 1 for n in page.figures.values())
    assert "<?xml" not in text and "<!DOCTYPE svg" not in text
    ids = re.findall(r'\bid="([^"]+)"', text)
    assert len(ids) == len(set(ids)), [i for i, n in Counter(ids).items() if n > 1][:5]
    refs = set(re.findall(r'(?:href="#|url\(#)([^")]+)', text))
    assert refs and refs <= set(ids)  # every clip path and marker reference reaches an id of its own figure


def test_no_external_resource_and_no_script(swept):
    text = swept[1].read_text()
    outside_xmlns = re.sub(r'xmlns(:\w+)?="[^"]*"', "", text)
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", outside_xmlns, re.I)
    assert "<link" not in text and "src=" not in text and "@import" not in text and "<script" not in text
    assert not [u for u in re.findall(r"url\(([^)]*)\)", text) if not u.startswith("#")]


def test_inline_svg_makes_two_matplotlib_figures_distinct(tmp_path):
    import matplotlib.pyplot as plt

    texts = []
    for i in range(2):  # the same axes twice: matplotlib gives both the same ids
        fig, ax = plt.subplots()
        ax.plot([1, 2, 3], [1, 4, 9], "o-")
        fig.savefig(tmp_path / f"{i}.svg")
        plt.close(fig)
        texts.append((tmp_path / f"{i}.svg").read_text())
    ids = [set(re.findall(r'\bid="([^"]+)"', t)) for t in texts]
    assert ids[0] & ids[1]  # the premise: they clash
    inlined = [report.inline_svg(t, f"f{i}-") for i, t in enumerate(texts)]
    new = [re.findall(r'\bid="([^"]+)"', t) for t in inlined]
    assert not set(new[0]) & set(new[1]) and len(new[0]) == len(ids[0])
    for t, own in zip(inlined, new):
        assert set(re.findall(r'(?:href="#|url\(#)([^")]+)', t)) <= set(own)
        assert t.startswith("<svg") and "matplotlib.org" not in t


def test_single_run_from_the_cli_default_path_and_full_diagnosis(single):
    r = vgp_cli("report", single)
    assert r.returncode == 0, r.stderr
    out = single / "report.html"
    assert r.stdout.splitlines()[-1] == str(out) and out.exists()
    page = Page(out.read_text())
    assert len(rows(page, "comparison")) == 1 and rows(page, "comparison")[0]["n"] == "1"
    assert "Nothing: one run." in " ".join(" ".join(page.text).split())
    (diagnosis,) = page.pres  # what `vgp diagnose` prints, without its colour markup
    expected = vgp_cli("diagnose", single).stdout
    assert diagnosis.split() == expected.split() and "verdict:" in diagnosis and "advice:" in diagnosis
    assert {"profile", "heatmap", "training"} <= set(page.figures)


def test_an_unfinished_run_alone_is_diagnosed_from_the_steps_it_recorded(single, tmp_path):
    folder = shutil.copytree(single, tmp_path / "killed")
    (folder / "summary.csv").unlink()
    for name in ("grad_norms.csv", "metrics.csv"):
        (folder / name).rename(folder / (name + ".partial"))
    (folder / "meta.json").write_text(json.dumps({"status": "running"}))
    page = Page(report.write([folder], warn=lambda m: None).read_text())
    text = " ".join(" ".join(page.text).split())
    assert "1 running" in text and "unfinished" in page.pres[0]
    (row,) = rows(page, "diagnosis")
    assert re.fullmatch(r"1/1 (vanishing|exploding|healthy)", row["verdict, step 0"])
    assert {"profile", "training"} <= set(page.figures)


def test_values_from_files_are_shown_as_text(tmp_path, monkeypatch):
    """A config value and a verdict that are markup appear as text, in the comparison and the diagnosis."""
    for i, act in enumerate(("tanh", "relu")):
        run(config.from_dict(tiny(name=f"r{i}", model__activation=act, train__steps=2)), out=tmp_path, quiet=True)
    edit(tmp_path / "r1" / "summary.csv", **{"model.activation.name": EVIL, "verdict": "<b>bold</b>"})
    monkeypatch.setattr(report, "_figures", lambda *a: [])  # the figures read config.yaml, untouched here
    text = report.html([tmp_path], warn=lambda m: None)
    assert "<script" not in text and "<b>bold" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    page = Page(text)
    assert EVIL in {r["activation"] for r in rows(page, "comparison")}
    assert any("1/1 <b>bold</b>" in r["verdict, step 0"] for r in rows(page, "diagnosis"))


def test_where_and_by_choose_the_rows(swept, tmp_path):
    folder, _ = swept
    r = vgp_cli("report", folder, "--where", "model.depth=2", "--by", "activation", "-o", tmp_path / "r.html")
    assert r.returncode == 0, r.stderr
    page = Page((tmp_path / "r.html").read_text())
    table = rows(page, "comparison")
    assert [(t["activation"], t["n"]) for t in table] == [("relu", "2"), ("tanh", "2")]
    assert "4 runs" in " ".join(page.text) and "model.depth=2" in " ".join(page.text)


def test_mixed_keys_are_warned_in_the_page(swept):
    folder, _ = swept
    warned = []
    page = Page(report.html([folder], by=["activation"], warn=warned.append))
    assert len(warned) == 1 and "depth" in warned[0]
    assert any(warned[0] in t for t in page.text)
    assert [r["n"] for r in rows(page, "comparison")] == ["4", "4"]


def test_damaged_and_unfinished_runs_are_left_out_or_counted(tmp_path):
    """The damaged sweep of test_readers_damaged: every kind of broken folder at once."""
    from test_readers_damaged import UNUSABLE, USABLE, damaged

    good = tmp_path / "good"
    for depth in (3, 4):
        run(config.from_dict(tiny(name=f"d{depth}", model__depth=depth, train__steps=6, log__every=2)), out=good,
            quiet=True)
    root = tmp_path / "sw"
    (root / "runs").mkdir(parents=True)
    for i, name in enumerate(list(UNUSABLE) + list(USABLE)):
        damaged(good, root / "runs", name, base=f"d{3 + i % 2}")
    warned = []
    out = report.write([root], warn=warned.append)
    assert out == root / "report.html"
    page = Page(out.read_text())
    text = " ".join(page.text)
    assert warned and all(w in text for w in warned)  # each summary left out is named in the page too
    table = rows(page, "comparison")
    assert sum(int(r["failed"]) for r in table) == 6  # killed, failed, interrupted: counted, not dropped
    assert "4 running" in text and "1 failed" in text and "1 interrupted" in text
    assert any("unfinished" in r["verdict, step 0"] for r in rows(page, "diagnosis"))
    assert {"profile", "heatmap", "training", "summary"} <= set(page.figures)


def test_a_figure_that_fails_is_shown_as_its_message(swept, monkeypatch):
    folder, _ = swept
    real = plots.plot

    def plot(paths, kind="all", out=None, *a, **k):
        if kind in ("all", "heatmap"):
            raise UserError(f"cannot draw {kind}: <nothing> to draw")
        return real(paths, kind, out, *a, **k)

    monkeypatch.setattr(plots, "plot", plot)
    page = Page(report.html([folder], warn=lambda m: None))
    text = " ".join(page.text)
    assert "cannot draw all: <nothing> to draw" in text and "cannot draw heatmap" in text
    assert {k for k, n in page.figures.items() if n} == {"profile", "training", "summary"}


@pytest.mark.parametrize("what", ["folder", "not_html", "under_a_file", "several_without_o", "missing"])
def test_bad_output_is_refused_before_any_work(swept, tmp_path, what):
    folder, _ = swept
    (tmp_path / "file.txt").write_text("x")
    args = {"folder": [folder, "-o", tmp_path], "not_html": [folder, "-o", tmp_path / "r.pdf"],
            "under_a_file": [folder, "-o", tmp_path / "file.txt" / "r.html"],
            "several_without_o": [folder, folder], "missing": [tmp_path / "nothing"]}[what]
    t = time.perf_counter()
    r = vgp_cli("report", *args)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("vgp: error: ")
    assert not list(tmp_path.glob("**/*.html")) and time.perf_counter() - t < 20


# -- in a real browser ---------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def browser_test(test):
    """Marked 'browser'; skipped, with the reason, where no chromium is installed."""
    skip = pytest.mark.skipif(CHROMIUM is None, reason="no chromium or chromium-browser on PATH "
                              "(Debian: apt-get install chromium; .ci/run installs it)")
    return pytest.mark.browser(pytest.mark.timeout(180)(skip(test)))


class Chromium:
    """Headless chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: it
    reads commands on fd 3 and writes replies and events on fd 4, each JSON message ended by a NUL).
    Offline: every request that is not a local file goes to a proxy that does not exist."""

    def __init__(self, profile: Path):
        chrome_in, self.to_chrome = os.pipe()  # (read, write)
        self.from_chrome, chrome_out = os.pipe()  # (read, write)
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--hide-scrollbars",
                 f"--user-data-dir={profile}", "--no-first-run", "--disable-extensions",
                 "--disable-background-networking", "--proxy-server=127.0.0.1:9", "--mute-audio", "about:blank"]
        self.proc = subprocess.Popen(["bash", "-c", f'exec "$0" "$@" 3<&{chrome_in} 4>&{chrome_out}', CHROMIUM, *flags],
                                     pass_fds=(chrome_in, chrome_out), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(chrome_in)
        os.close(chrome_out)
        self.buffer, self.messages, self.events, self.id = b"", [], [], 0

    def _next(self, match, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.messages):
                if match(m):
                    return self.messages.pop(i)
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.from_chrome], [], [], left)[0]:
                raise TimeoutError(f"chromium: no answer within {timeout} s")
            chunk = os.read(self.from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed its pipe")
            *whole, self.buffer = (self.buffer + chunk).split(b"\0")
            parsed = [json.loads(w) for w in whole]
            self.messages += parsed
            self.events += [m for m in parsed if "method" in m]

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.id += 1
        message = {"id": self.id, "method": method, "params": params or {}, **({"sessionId": session} if session else {})}
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        reply = self._next(lambda m, i=self.id: m.get("id") == i)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def load(self, url: str, width: int = 1280) -> "Chromium":
        """Open ``url`` in a new tab and wait for its load event; events are collected from the start."""
        self.events = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=self.session)
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900, "deviceScaleFactor": 1,
                                                         "mobile": False}, self.session)
        self.send("Page.navigate", {"url": url}, self.session)
        self._next(lambda m: m.get("method") == "Page.loadEventFired")
        self.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")  # painted
        return self

    def eval(self, js: str):
        reply = self.send("Runtime.evaluate", {"expression": js, "returnByValue": True, "awaitPromise": True},
                          self.session)
        return reply["result"].get("value")

    def problems(self) -> list[str]:
        """Console messages, uncaught exceptions, error log entries and requests that left the machine."""
        out = []
        for e in self.events:
            m, p = e["method"], e.get("params", {})
            if m == "Runtime.consoleAPICalled":
                out.append(f"console.{p['type']}: {[a.get('value') for a in p['args']]}")
            elif m == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('exception', {}).get('description')}")
            elif m == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                out.append(f"log {p['entry']['level']}: {p['entry']['text']}")
            elif m == "Network.requestWillBeSent" and not p["request"]["url"].startswith(("file:", "data:", "about:")):
                out.append(f"request: {p['request']['url']}")
        return out

    def screenshot(self) -> np.ndarray:
        """The whole page (not only the window) as an RGB(A) array of floats in [0, 1]."""
        import matplotlib.image

        size = self.send("Page.getLayoutMetrics", session=self.session)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 16000), "scale": 1}
        png = self.send("Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True},
                        self.session)["data"]
        self.png = base64.b64decode(png)
        return matplotlib.image.imread(io.BytesIO(self.png), format="png")

    def close(self):
        try:
            self.send("Browser.close")
            self.proc.wait(timeout=20)
        except Exception:  # noqa: BLE001
            self.proc.kill()
            self.proc.wait()
        for fd in (self.to_chrome, self.from_chrome):
            os.close(fd)


@pytest.fixture
def chromium(tmp_path):
    browser = Chromium(tmp_path / "profile")
    yield browser
    browser.close()


def ink(pixels: np.ndarray) -> float:
    """The fraction of pixels that are not (nearly) white."""
    return float((pixels[..., :3].min(axis=-1) < 0.9).mean())


@browser_test
def test_the_detectors_catch_a_script_error_and_a_request(chromium, tmp_path):
    """The premise of the browser test: a broken page is seen as broken."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><p>x</p><script>console.error("deliberate"); nothing();</script>'
                   '<img src="https://example.com/x.png"></body></html>')
    found = "\n".join(chromium.load(bad.as_uri()).problems())
    assert "console.error: ['deliberate']" in found and "nothing is not defined" in found
    assert "request: https://example.com/x.png" in found
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    assert ink(chromium.load(blank.as_uri()).screenshot()) == 0 and not chromium.problems()


@browser_test
def test_the_report_loads_offline_cleanly_with_every_figure_drawn(swept, chromium, tmp_path):
    folder, out = swept
    chromium.load(out.as_uri())
    assert chromium.problems() == []
    assert chromium.eval("document.scripts.length") == 0
    figures = chromium.eval("JSON.stringify([...document.querySelectorAll('figure')].map(f => {"
                            "const s = f.querySelector('svg'); if (!s) return [f.id, 0, 0, 0, 0];"
                            "const r = s.getBoundingClientRect(); return [f.id, r.x, r.y + scrollY, r.width, r.height];}))")
    figures = json.loads(figures)
    assert {f[0].removeprefix("figure-") for f in figures} == KINDS
    pixels = chromium.screenshot()
    (tmp_path / "report.png").write_bytes(chromium.png)
    assert ink(pixels) > 0.05 and pixels[..., :3].std() > 0.05, f"blank? {tmp_path / 'report.png'}"
    for name, x, y, w, h in figures:  # each figure has a size, fits the page and is drawn (not blank)
        assert 200 < w <= 1280 and h > 100, (name, w, h)
        part = pixels[int(y):int(y + h), int(x):int(x + w)]
        assert ink(part) > 0.01, name
    assert chromium.eval("document.documentElement.scrollWidth") <= 1280  # nothing wider than the window


@browser_test
def test_escaped_values_stay_text_in_the_browser(tmp_path, chromium, monkeypatch):
    run(config.from_dict(tiny(name="r0", train__steps=2)), out=tmp_path, quiet=True)
    edit(tmp_path / "r0" / "summary.csv", verdict=EVIL)
    monkeypatch.setattr(report, "_figures", lambda *a: [])
    out = report.write([tmp_path / "r0"], tmp_path / "r.html", warn=lambda m: None)
    chromium.load(out.as_uri())
    assert chromium.problems() == [] and chromium.eval("document.scripts.length") == 0
    assert EVIL in chromium.eval("document.body.innerText")
