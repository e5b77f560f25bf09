"""``bsoc pipeline``: simulate (or use a dataset) -> train -> compress -> fine-tune -> SVD
baseline -> EKF -> benchmark -> report, skipping what is up to date."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from bsoc.console import emit_json, err_console, out_console


def pipeline(
    ctx: typer.Context,
    profile: str = typer.Option("quick", "--profile", help="tiny (tests), quick (the demo, "
                                "<= 15 min on 2 cores) or full (the benchmark figures)."),
    data: Path = typer.Option(None, "--data", help="Use this dataset (e.g. from 'bsoc data "
                              "ingest') instead of simulating data/sim-PROFILE."),
    run: str = typer.Option(None, "--run", help="Name of the run: models/RUN and reports/RUN "
                            "(default: the profile, or the dataset folder's name)."),
    seed: int = typer.Option(0, "--seed", help="Seed for simulation, training and fine-tuning."),
    learnables_reduction: float = typer.Option(
        None, "--learnables-reduction", min=0.0, max=0.999,
        help="Compression goal for the projected model (default 0.9; 0.5 for tiny)."),
    pretrain: bool = typer.Option(
        None, "--pretrain/--no-pretrain",
        help="Train on cells simulated for it first, then on --data [default: yes for a "
             "dataset that 'bsoc data simulate' did not make]."),
    threads: int = typer.Option(None, "--threads", min=1, help="Torch threads to train and "
                                "fine-tune with [default: the profile's]. Use 1 on a busy "
                                "machine."),
    force: bool = typer.Option(False, "--force", help="Replace bsoc outputs at the run's "
                               "paths that this pipeline did not make (other files are kept)."),
    json_output: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Run the whole job end to end and print the report's path and the summary table."""
    from bsoc.command_lines import CommandLines
    from bsoc.pipeline import PipelinePlan, pretrains_by_default, run_pipeline

    plan = PipelinePlan(
        profile=profile,
        run=run or (data.name if data else profile),
        data=data or Path("data") / f"sim-{profile}",
        simulate=data is None,
        seed=seed,
        learnables_reduction=learnables_reduction,
        pretrain=pretrains_by_default(data) if pretrain is None else pretrain,
        threads=threads,
    )

    bsoc = ctx.find_root().command  # every step is one of bsoc's own commands

    def invoke(argv: list[str]) -> None:
        bsoc.main(args=argv, prog_name="bsoc", standalone_mode=False)

    started = time.perf_counter()
    result = run_pipeline(plan, CommandLines(bsoc), invoke, err_console.print, force=force)
    result["seconds"] = round(time.perf_counter() - started, 1)
    if json_output:
        emit_json(result)
        return
    from bsoc.commands.bench import print_summary

    print_summary(json.loads(Path(result["benchmark"]).read_text()))
    out_console.print(f"report: [bold]{result['report']}[/] (pipeline took {result['seconds']:.0f} s)")


def register(app: typer.Typer) -> None:
    app.command("pipeline")(pipeline)
