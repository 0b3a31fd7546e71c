"""The ``vgp`` command line: each command a few lines that call the library."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from vgp.errors import UserError

app = typer.Typer(
    help="vgp: train deep networks and record how their gradients vanish or explode.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _err(message: str) -> None:
    typer.echo(f"vgp: error: {message}", err=True)


def _version(value: bool) -> None:
    if value:
        import vgp

        typer.echo(f"vgp {vgp.__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print vgp's version and exit")):
    """vgp: train deep networks and record how their gradients vanish or explode."""


@app.command()
def run(
    config: Path = typer.Argument(..., help="YAML config file", show_default=False),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. model.depth=40 seed=3",
                                                    show_default=False),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="results folder (default: the config's 'out')"),
    force: bool = typer.Option(False, "--force", help="overwrite a finished run of the same name"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
):
    """Train one config and record per-layer gradient norms; prints the run folder last."""
    from vgp import config as cfgmod
    from vgp.train import run as run_

    cfg = cfgmod.load(config, overrides or [])
    try:
        result = run_(cfg, out=out, force=force, quiet=quiet)
    except UserError:
        raise
    except Exception as e:  # the run failed (disk full, out of memory, ...): its folder says so
        from vgp.errors import clipped

        folder = Path(out if out is not None else cfg.out) / cfg.name
        where = f"; the traceback is in {folder / 'error.txt'}" if (folder / "error.txt").exists() else ""
        _err(f"run {cfg.name} failed: {type(e).__name__}: {clipped(str(e), 500)}{where}")
        raise typer.Exit(1)
    if not quiet:
        s = result.summary
        typer.echo(_run_line(s), err=True)
    typer.echo(str(result.folder))


def _run_line(s: dict) -> str:
    """'completed: 300 steps in 2.4 s, loss 2.26, test acc 0.137; gradients vanishing (x0.14 per layer)'."""
    from vgp.analysis import _num

    def num(v, *sides):  # digits enough to stay on the right side of the verdict's thresholds
        return "-" if v is None or v != v else _num(v, *sides)

    line = f"{s['status']}: {s['steps_done']} steps in {num(s['wall_s'])} s, loss {num(s['final_loss'])}"
    if s.get("final_test_acc") is not None:
        line += f", test acc {num(s['final_test_acc'])}"
    elif s.get("final_test_loss") is not None:
        line += f", test loss {num(s['final_test_loss'])}"
    if s.get("task_baseline") is not None:
        line += f" (baseline {num(s['task_baseline'])})"
    if s.get("diverged_step") is not None:
        line += f", diverged at step {s['diverged_step']}"
    verdict = s.get("verdict")
    if verdict in ("vanishing", "exploding", "healthy"):
        line += f"; gradients at step 0: {verdict}"
        for key, per in (("decay_per_layer", "layer"), ("decay_per_step", "time step")):
            rate = s.get(key)
            if rate is not None and rate == rate:
                line += f" (x{num(rate, 1.0)} per {per})"
                break
    return line


@app.command()
def validate(configs: List[Path] = typer.Argument(..., help="config or sweep files", show_default=False)):
    """Check config and sweep files without training: keys, types, ranges, and that the model builds,
    takes a step and fits in memory."""
    from vgp import config as cfgmod

    from vgp import sweep as sweepmod

    failed = 0
    for path in configs:
        try:
            if sweepmod.is_sweep_file(cfgmod.read_yaml(path)):  # a sweep: every cell is validated
                n = len(sweepmod.load(path).cells)
                typer.echo(f"ok: {path} (sweep of {n} runs)")
                continue
            cfgmod.load(path)
            typer.echo(f"ok: {path}")
        except UserError as e:
            _err(str(e))
            failed += 1
    if failed:
        raise typer.Exit(2)


@app.command("ls")
def ls(what: str = typer.Argument("all", help="activations | inits | optimizers | schedules | datasets | configs | keys | all")):
    """List what a config can name: activations, inits, optimizers, schedules, datasets, configs, keys."""
    from rich.console import Console
    from rich.table import Table

    from vgp import config as cfgmod

    tables = {
        "activations": ("activation", "vgp.activations", "ACTIVATIONS"),
        "inits": ("init", "vgp.inits", "INITS"),
        "bias_inits": ("bias init", "vgp.inits", "BIAS_INITS"),
        "optimizers": ("optimizer", "vgp.optim", "OPTIMIZERS"),
        "schedules": ("schedule", "vgp.optim", "SCHEDULES"),
        "datasets": ("dataset", "vgp.data", "DATASETS"),
    }
    valid = list(tables) + ["configs", "keys", "all"]
    if what not in valid:
        from vgp.registry import did_you_mean

        raise UserError(f"unknown listing '{what}'{did_you_mean(what, valid)} (valid: {', '.join(valid)})")
    console = Console()
    import importlib

    for key, (title, module, attr) in tables.items():
        if what not in (key, "all"):
            continue
        registry = getattr(importlib.import_module(module), attr)
        table = Table(title=f"{title}s", title_justify="left")
        for col in ("name", "arguments", "description"):
            table.add_column(col)
        for name in registry.names():
            entry = registry[name]
            ranges = entry.meta.get("ranges", {})  # the valid values each argument declares
            args = ", ".join(f"{k}={v}" + (f" ({ranges[k]})" if k in ranges else "")
                             for k, v in entry.defaults().items())
            table.add_row(name, args, entry.doc)
        console.print(table)
    if what in ("keys", "all"):
        table = Table(title="config keys", title_justify="left")
        for col in ("key", "default", "description"):
            table.add_column(col)
        for row in cfgmod.describe():
            table.add_row(*row)
        console.print(table)
    if what in ("configs", "all"):
        table = Table(title=f"configs in {CONFIGS}", title_justify="left")
        table.add_column("file")
        table.add_column("what it shows")
        for path in sorted(CONFIGS.rglob("*.yaml")):
            lines = path.read_text().splitlines()
            first = lines[0] if lines else ""
            table.add_row(str(path.relative_to(CONFIGS)), first.lstrip("# ").strip())
        console.print(table)


@app.command()
def diagnose(
    paths: List[Path] = typer.Argument(..., help="run folders, a sweep folder or a results folder",
                                       show_default=False),
    json_: bool = typer.Option(False, "--json", help="print one JSON object per run instead of the report"),
    vanishing: float = typer.Option(0.1, help="verdict vanishing: gradient compounded over the depth below this"),
    exploding: float = typer.Option(10.0, help="verdict exploding: compounded above this"),
    drop: float = typer.Option(0.01, help="report layers whose gradient is below this x the output layer's"),
    rise: float = typer.Option(100.0, help="report layers whose gradient is above this x the output layer's"),
    stall: float = typer.Option(0.02, help="stalled: the loss fell by less than this fraction"),
):
    """Say whether a run's gradients vanish, explode or flow, with the evidence and one line of advice."""
    import json

    from vgp import analysis

    from vgp.errors import finite

    # thresholds are ratios: a NaN or inf here would turn every verdict into a silent 'healthy'
    finite(vanishing, "--vanishing", 0, low_open=True, high=1)
    finite(exploding, "--exploding", 1)
    finite(drop, "--drop", 0, low_open=True, high=1)
    finite(rise, "--rise", 1)
    finite(stall, "--stall", 0, high=1)
    th = analysis.Thresholds(vanishing=vanishing, exploding=exploding, drop=drop, rise=rise, stall=stall)
    for i, run_ in enumerate(analysis.find_runs(paths)):  # among several, unreadable ones are left out, warned
        d = analysis.diagnose(run_.folder, th, run_)
        if json_:
            typer.echo(json.dumps(analysis.jsonable(d)))
        else:
            from rich.console import Console

            Console().print(("\n" if i else "") + analysis.report(d), highlight=False)


@app.command()
def theory(
    config: Optional[Path] = typer.Argument(None, help="a config: take sigma_w^2, sigma_b^2 from its init",
                                            show_default=False),
    activation: str = typer.Option("tanh", help="activation (vgp ls activations)"),
    weight_var: Optional[float] = typer.Option(None, "--weight-var", help="sigma_w^2 (weights N(0, sigma_w^2/fan_in))"),
    bias_var: float = typer.Option(0.0, "--bias-var", help="sigma_b^2"),
    depth: Optional[int] = typer.Option(None, help="also print the finite-depth profile of this many hidden layers"),
    critical: bool = typer.Option(False, "--critical", help="find the critical sigma_w^2 (chi_1 = 1) at this sigma_b^2"),
    json_: bool = typer.Option(False, "--json", help="print one JSON object"),
):
    """Mean-field predictions (Poole et al. 2016, Schoenholz et al. 2017): q*, chi_1, gradient ratio, phase."""
    from vgp import theory as th

    notes, setting, labels = [], None, ["--weight-var", "--bias-var", "--depth"]
    if config is not None:
        from vgp import config as cfgmod

        cfg = cfgmod.load(config)
        try:
            setting = th.from_config(cfgmod.to_dict(cfg))
        except th.NotApplicable as e:
            raise UserError(f"{config}: the mean-field theory does not apply: {e}") from None
        act, (weight_var, bias_var), notes = setting.activation, setting.hidden, setting.notes
        labels[:2] = [f"{config}: sigma_w^2 of model.init", f"{config}: sigma_b^2 of model.bias_init"]
        if depth is None:
            depth, labels[2] = cfg.model.depth, f"{config}: model.depth"
    else:
        act = activation
    th.check_inputs(weight_var, bias_var, depth, tuple(labels))
    if critical:
        weight_var = th.critical_weight_var(act, bias_var)
    if weight_var is None:
        raise UserError("give --weight-var, --critical or a config file")
    out = th.predict(act, weight_var, bias_var, depth, setting if config is not None and not critical else None)
    if critical and notes:  # with --critical predict is not given the config; otherwise it gives its notes
        out["notes"] = notes
    if json_:
        import json

        from vgp import analysis

        typer.echo(json.dumps(analysis.jsonable(out)))
        return
    typer.echo(th.describe(out))


@app.command()
def plot(
    paths: List[Path] = typer.Argument(..., help="run folders, a sweep folder, a results folder or summary CSVs",
                                       show_default=False),
    kind: str = typer.Option("all", "--kind", "-k",
                             help="profile | heatmap | time | training | summary | phase | all"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="file (one kind; .png or .svg) or folder (all); "
                                                               "default PATH/plots/"),
    hue: Optional[str] = typer.Option(None, "--hue", help="one colour per value of this config key "
                                                          "(default: the sweep's first axis)"),
    col: Optional[str] = typer.Option(None, "--col", help="one column of panels per value of this key "
                                                          "(default: the next axis)"),
    row: Optional[str] = typer.Option(None, "--row", help="one row of panels per value of this key "
                                                          "(default: the next axis)"),
    where: Optional[List[str]] = typer.Option(None, "--where", help="KEY=VALUE: keep only these runs (repeatable)"),
    steps: Optional[str] = typer.Option(None, help="recorded steps to draw, e.g. 0,100,500 (default: a few for one "
                                                   "run, the first for several)"),
    x: Optional[str] = typer.Option(None, help="summary, phase: config key on the x axis (e.g. depth, lr, sigma_w^2; "
                                                "default: the first numeric axis; phase: sigma_w^2)"),
    y: str = typer.Option("decay_per_layer", help="summary, phase: a summary.csv column (final_loss, final_test_acc, "
                                                  "grad_ratio, ...) or steps_to_loss"),
    target_loss: Optional[float] = typer.Option(None, "--target-loss", help="summary --y steps_to_loss: the "
                                                                            "training loss to reach"),
    by: Optional[str] = typer.Option(None, help="another name for --hue"),
    fmt: str = typer.Option("png", "--format", help="png | svg (for kind all)"),
):
    """Draw gradient profiles, heatmaps, time profiles, training curves, sweep summaries and phase diagrams,
    split by facet."""
    from vgp import plots

    try:
        chosen = [int(s) for s in steps.split(",")] if steps else None
    except ValueError:
        raise UserError(f"--steps: expected integers separated by commas, got {steps!r}") from None
    if fmt not in ("png", "svg"):
        raise UserError(f"--format: png or svg, got {fmt!r}")
    if hue and by and hue != by:
        raise UserError(f"--by is another name for --hue: give one (got --hue {hue} and --by {by})")
    for path in plots.plot(paths, kind, out, chosen, x, y, hue or by, fmt, hue=hue or by, col=col, row=row,
                           where=where or [], target_loss=target_loss):
        typer.echo(str(path))


@app.command()
def sweep(
    sweep_file: Path = typer.Argument(..., help="sweep YAML file (configs/sweeps/)", show_default=False),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value for every run; key=a,b,c adds a grid axis",
                                                    show_default=False),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="local: worker processes (default: one per core, "
                                                                   "or per GPU)"),
    launcher: Optional[str] = typer.Option(None, "--launcher", help="local | slurm (default: the file's launcher.name, "
                                                                    "else local)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="results folder (default: the base config's 'out')"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the runs and what each varies; run nothing"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="run failed runs again"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="slurm: wait for the jobs, showing progress"),
    partition: Optional[str] = typer.Option(None, "--partition", help="slurm: partition"),
    time_min: Optional[int] = typer.Option(None, "--time", help="slurm: time limit per array task, minutes"),
    cpus_per_task: Optional[int] = typer.Option(None, "--cpus-per-task", help="slurm: CPUs per array task"),
    gpus_per_task: Optional[int] = typer.Option(None, "--gpus-per-task", help="slurm: GPUs per array task"),
    runs_per_task: Optional[int] = typer.Option(None, "--runs-per-task", help="slurm: runs packed into one array task"),
    no_batch: bool = typer.Option(False, "--no-batch", help="local: train every cell alone (by default, cells that "
                                                            "differ only in seed, init, activation or optimizer train "
                                                            "as one batched model, see launcher.batch)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress display"),
):
    """Run a sweep: every cell of a grid of configs, skipping finished runs; prints the sweep folder last."""
    from vgp import launch, sweep as sweepmod

    sw = sweepmod.load(sweep_file, overrides or [])
    settings = launch.launcher_settings(sw, {"name": launcher, "jobs": jobs, "partition": partition,
                                             "time_min": time_min, "cpus_per_task": cpus_per_task,
                                             "gpus_per_task": gpus_per_task, "runs_per_task": runs_per_task,
                                             "batch": 1 if no_batch else None})
    folder = Path(out if out is not None else sw.base.get("out", "results"))
    if dry_run:
        launch.print_plan(sw, folder / sw.name)
        return
    report = launch.launch(sw, folder, settings, retry_failed=retry_failed, wait=wait, quiet=quiet)
    typer.echo(report.text(), err=True)
    typer.echo(str(report.folder))
    if report.failed or (report.missing and wait):
        raise typer.Exit(1)


@app.command()
def compare(
    paths: List[Path] = typer.Argument(..., help="sweep folders, run folders, folders of runs or summary CSVs",
                                       show_default=False),
    by: Optional[str] = typer.Option(None, "--by", help="config keys to group by, comma-separated, e.g. depth,activation "
                                                        "(default: the sweep's grid and zip keys; seeds are always "
                                                        "aggregated)"),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="summary columns, comma-separated"),
    where: Optional[List[str]] = typer.Option(None, "--where", help="KEY=VALUE: keep only these runs (repeatable)"),
    fmt: Optional[str] = typer.Option(None, "--format", help="table | markdown | csv | json (default: table on a "
                                                             "terminal, markdown when piped)"),
    csv: Optional[Path] = typer.Option(None, "--csv", help="also write the table as CSV"),
):
    """Compare runs: one row per configuration, each metric over its seeds (ratios as geometric means)."""
    from vgp import compare as comparemod

    if fmt is not None and fmt not in comparemod.FORMATS:
        raise UserError(f"--format: one of {', '.join(comparemod.FORMATS)}, got {fmt!r}")
    if csv is not None:
        comparemod.check_csv_path(csv)  # before the work, not after the table is printed
    table = comparemod.compare(paths, by=comparemod.split(by), metrics=comparemod.split(metrics), where=where or [])
    comparemod.show(table, fmt)
    if csv is not None:
        comparemod.write_csv(table, csv)


@app.command()
def report(
    paths: List[Path] = typer.Argument(..., help="a run folder, several, a folder of runs or a sweep folder",
                                       show_default=False),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="the HTML file (default: PATH/report.html)"),
    where: Optional[List[str]] = typer.Option(None, "--where", help="KEY=VALUE: keep only these runs (repeatable)"),
    by: Optional[str] = typer.Option(None, "--by", help="config keys to group by, comma-separated (default: the "
                                                        "sweep's grid and zip keys)"),
):
    """Write one self-contained HTML page (no network needed) with what differs, the comparison, the
    diagnosis and the figures; prints the file written last."""
    from vgp import report as reportmod
    from vgp.compare import split

    typer.echo(str(reportmod.write(paths, out, by=split(by), where=where or [])))


@app.command()
def gallery(
    names: Optional[List[str]] = typer.Argument(None, help="entries to train (default: all); see --list",
                                                show_default=False),
    quick: bool = typer.Option(False, "--quick", help="the reduced sizes the tests run (a few minutes for all), "
                                                      "into their own folder and page"),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="worker processes (default: one per core)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="results folder (default: results/gallery, "
                                                                 "with --quick results/gallery-quick)"),
    doc: Optional[Path] = typer.Option(None, "--doc", help="the page to write (default: docs/gallery.md when "
                                                           "every entry has runs; else, or with --quick or --out: "
                                                           "OUT/gallery.md)"),
    train: bool = typer.Option(True, "--train/--no-train", help="--no-train: only measure what the folders hold "
                                                                "and write the page"),
    list_: bool = typer.Option(False, "--list", help="list the entries and exit"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress display"),
):
    """Reproduce the classic vanishing/exploding-gradient results (configs/gallery/) and write the
    gallery page with what was measured; finished runs are kept. Prints the page written last."""
    from vgp import gallery as gal

    if list_:
        for e in gal.entries():
            h = e.header()
            typer.echo(f"{e.number:>2}  {e.name:<22} {e.title}\n    claim: {h['claim']}")
        return
    from vgp.gallery import run as run_gallery

    typer.echo(str(run_gallery(names or [], quick=quick, jobs=jobs, out=out, doc=doc, train=train, quiet=quiet)))


def bound_openmp_spinning() -> None:
    """Set GOMP_SPINCOUNT=30000 unless the user set it or OMP_WAIT_POLICY; call before torch loads."""
    # OpenMP threads waiting for work spin for libgomp's default 300,000 rounds before they sleep. Beside
    # another PyTorch process on the same cores the spinning teams take each other's time: a 2-thread
    # step took 1.3 s instead of 8 ms (scripts/bench_threads.py). 30,000 rounds: 169 ms there, and about
    # the same speed alone; PASSIVE (never spin) 13 ms there but 3x slower alone, so it is left to the
    # user. libgomp reads this when torch loads, hence here, before any command imports torch; what the
    # user set wins. README, "Threads beside other jobs".
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "30000")


def main() -> None:
    bound_openmp_spinning()
    try:
        app(prog_name="vgp")
    except UserError as e:
        _err(str(e))
        sys.exit(2)
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(130)
