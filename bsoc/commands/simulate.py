"""``bsoc data simulate``: make the built-in physics-based dataset with PyBaMM.

PyBaMM is imported inside the command (by :mod:`bsoc.data.simulate`), so ``bsoc --help``
stays fast.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer

from bsoc.command_lines import running_command
from bsoc.console import emit_json, err_console, progress

HELP = (
    "Simulate the built-in physics-based dataset with PyBaMM (nothing is downloaded).\n\n"
    "An LG M50 cell (ORegan2022, SPMe + lumped thermal) runs drive cycles, CC, HPPC, charging "
    "and C/20 OCV tests at -10..40 degC; sensor errors are added to the measured columns, and "
    "cycles are split into train/val/test whole."
)


def simulate(
    ctx: typer.Context,
    profile: str = typer.Option(
        "quick",
        "--profile",
        help="How much to simulate: 'tiny' (seconds, for tests), 'quick' (a few minutes on "
        "2 cores, the demo default) or 'full' (the benchmark set: 5 temperatures x many "
        "cycles, hours of cell time each; 5-10 minutes).",
    ),
    out: Path = typer.Option(
        None, "--out", help="Dataset folder to write (default: data/sim-PROFILE)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for profiles, initial SOCs and sensor errors."),
    model: str = typer.Option(
        "SPMe", "--model", help="Electrochemical model: SPMe (fast) or DFN (3-4x slower)."
    ),
    workers: int = typer.Option(
        min(2, os.cpu_count() or 1),
        "--workers",
        help="Processes to simulate in; the result does not depend on it.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace the dataset bsoc wrote at "
                               "--out (other files there are kept)."),
    json_output: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Simulate the built-in physics-based dataset with PyBaMM (see HELP)."""
    from bsoc.profiles import run_profile

    scale = run_profile(profile).simulation
    out = out if out is not None else Path("data") / f"sim-{profile}"
    from bsoc.data.dataset import DATASET_OUTPUT
    from bsoc.outputs import check_output

    check_output(out, DATASET_OUTPUT, force=force)  # refuse early, before the simulation
    from bsoc.data.pybamm_cell import CellConfig
    from bsoc.data.simulate import plan_cycles, simulate_dataset

    config = CellConfig(model=model)
    planned = len(plan_cycles(scale, seed))
    started = time.perf_counter()
    with progress(transient=json_output) as bar:
        task = bar.add_task(f"simulating ({profile})", total=planned, info="")

        def on_cycle(cycle) -> None:  # noqa: ANN001 - a bsoc.data.schema.Cycle
            bar.update(task, advance=1, info=cycle.meta.name)

        dataset = simulate_dataset(scale, seed, config, profile=profile, workers=workers,
                                   on_cycle=on_cycle, command=running_command(ctx))
    dataset.save(out, force=force)
    elapsed = time.perf_counter() - started
    splits = {name: len(dataset.split(name)) for name in ("train", "val", "test")}
    summary = {
        "dataset": str(out),
        "name": dataset.name,
        "cycles": len(dataset),
        "splits": splits,
        "rows": sum(len(c.frame) for c in dataset),
        "cell_hours": dataset.provenance["cell_hours"],
        "temperatures_c": sorted({c.meta.ambient_c for c in dataset}),
        "fingerprint": dataset.fingerprint(),
        "seconds": round(elapsed, 1),
    }
    if json_output:
        emit_json(summary)
    else:
        err_console.print(
            f"[green]wrote[/] {out}: {summary['cycles']} cycles ({splits}), "
            f"{summary['cell_hours']} cell-hours, {summary['rows']} rows in {elapsed:.0f} s"
        )


def register(data_app: typer.Typer) -> None:
    """Add ``simulate`` to the ``bsoc data`` group."""
    data_app.command("simulate", help=HELP)(simulate)
