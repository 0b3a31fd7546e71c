"""The ``vgp`` command line: each command a few lines that call the library."""

from __future__ import annotations

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
    result = run_(cfg, out=out, force=force, quiet=quiet)
    if not quiet:
        s = result.summary
        typer.echo(f"{result.status}: {s['steps_done']} steps, final loss {s['final_loss']}, "
                   f"test acc {s['final_test_acc']}, {s['wall_s']} s", err=True)
    typer.echo(str(result.folder))


@app.command()
def validate(configs: List[Path] = typer.Argument(..., help="config files", show_default=False)):
    """Check config files (keys, types, names) without training."""
    from vgp import config as cfgmod

    failed = 0
    for path in configs:
        try:
            cfgmod.load(path)
            typer.echo(f"ok: {path}")
        except UserError as e:
            _err(str(e))
            failed += 1
    if failed:
        raise typer.Exit(2)


@app.command("ls")
def ls(what: str = typer.Argument("all", help="activations | inits | optimizers | datasets | configs | keys | all")):
    """List what a config can name: activations, inits, optimizers, datasets, configs, keys."""
    from rich.console import Console
    from rich.table import Table

    from vgp import config as cfgmod

    tables = {
        "activations": ("activation", "vgp.activations", "ACTIVATIONS"),
        "inits": ("init", "vgp.inits", "INITS"),
        "bias_inits": ("bias init", "vgp.inits", "BIAS_INITS"),
        "optimizers": ("optimizer", "vgp.optim", "OPTIMIZERS"),
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
            args = ", ".join(f"{k}={v}" for k, v in entry.defaults().items())
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
            first = path.read_text().splitlines()[0] if path.read_text() else ""
            table.add_row(str(path.relative_to(CONFIGS)), first.lstrip("# ").strip())
        console.print(table)


def main() -> None:
    try:
        app(prog_name="vgp")
    except UserError as e:
        _err(str(e))
        sys.exit(2)
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(130)
