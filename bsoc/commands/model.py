"""``bsoc train`` and ``bsoc evaluate``: the LSTM estimator's training and any model's accuracy.

Heavy imports (torch, matplotlib) happen inside the commands so ``bsoc --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from bsoc.command_lines import running_command
from bsoc.console import emit_json, err_console, out_console, progress, training_progress

CHECKPOINT_DIR = "checkpoint"


def train(
    ctx: typer.Context,
    data: Path = typer.Option(..., "--data", help="Dataset folder (manifest.json + cycles/) "
                              "with train and val splits."),
    out: Path = typer.Option(..., "--out", help="Model folder to write, e.g. models/lstm."),
    profile: str = typer.Option("quick", "--profile", help="tiny (tests, seconds), quick "
                                "(demo, ~3-4 min on 2 cores) or full (best accuracy, 60 "
                                "epochs, ~30 min)."),
    epochs: int = typer.Option(None, "--epochs", min=1, help="Override the profile's epochs."),
    max_minutes: float = typer.Option(None, "--max-minutes", help="Stop after this many "
                                      "minutes of training (the best weights so far are kept)."),
    seed: int = typer.Option(0, "--seed", help="Seed for initialisation, windows and dropout."),
    threads: int = typer.Option(None, "--threads", min=1, help="Torch threads [default: the "
                                "profile's, 2 for quick/full]. Use 1 on a busy machine: threads "
                                "fighting for oversubscribed cores run several times slower."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint/ (kept "
                                "after an interruption or a --max-minutes stop) with the same "
                                "options (--max-minutes may differ)."),
    init_from: Path = typer.Option(None, "--init-from", help="Start from this trained model's "
                                   "weights and normalisation (same profile), e.g. one trained "
                                   "on 'bsoc data simulate' cells, instead of a new network."),
    force: bool = typer.Option(False, "--force", help="Replace the model or checkpoint bsoc "
                               "wrote at --out (other files there are kept)."),
    json_output: bool = typer.Option(False, "--json", help="Print the training summary as JSON."),
) -> None:
    """Train the LSTM SOC network on a dataset (early stopping on its val split).

    Writes OUT/model.safetensors and OUT/config.json (architecture,
    normalisation, data fingerprint, seed, training history, validation
    metrics). A checkpoint is kept in OUT/checkpoint/ after every epoch,
    so an interrupted run continues with --resume.
    """
    from bsoc.data.dataset import Dataset
    from bsoc.errors import OverwriteRefusedError
    from bsoc.estimator import prepare_model_dir
    from bsoc.profiles import run_profile
    from bsoc.train import train_model
    from bsoc.train_checkpoint import CHECKPOINT_STATE, CHECKPOINT_WEIGHTS

    chosen = run_profile(profile)
    checkpoint = out / CHECKPOINT_DIR
    has_checkpoint = (checkpoint / "checkpoint.json").exists()
    # Resuming continues the model in OUT, so it may replace it; anything else must not.
    prepare_model_dir(out, force=force or (resume and has_checkpoint),
                      inputs=[data, *([init_from] if init_from else [])])
    if has_checkpoint and not (resume or force):
        raise OverwriteRefusedError(
            f"an unfinished training run has a checkpoint in {checkpoint}",
            remedy="pass --resume to continue it or --force to start afresh",
        )
    dataset = Dataset.load(data)
    with progress() as bar:
        on_step = training_progress(bar, bar.add_task("training", total=None, info=""))

        estimator, result = train_model(
            dataset, profile=chosen, epochs=epochs, max_minutes=max_minutes, seed=seed,
            threads=threads, checkpoint_dir=checkpoint, resume=resume, init_from=init_from,
            name=out.name, command=running_command(ctx), on_step=on_step,
        )
    estimator.save(out, force=True)
    if not result.stopped.startswith("time budget"):  # finished: nothing left to resume
        for name in (CHECKPOINT_WEIGHTS, CHECKPOINT_STATE):
            (checkpoint / name).unlink(missing_ok=True)
        if checkpoint.is_dir() and not any(checkpoint.iterdir()):  # a user's file stays
            checkpoint.rmdir()
    validation = estimator.metadata["validation"]
    summary = {
        "model": str(out),
        "kind": estimator.kind,
        "learnables": estimator.learnables(),
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped": result.stopped,
        "seconds": result.seconds,
        "val_rmse_pct": validation["rmse_pct"],
        "val_cold_start_rmse_pct": validation["scenarios"]["cold_start"]["rmse_pct"],
    }
    if json_output:
        emit_json(summary)
        return
    err_console.print(f"[bold green]model written to {out}[/] ({summary['learnables']:,} "
                      f"learnables, best epoch {result.best_epoch}, {result.stopped})")
    err_console.print(f"  validation RMSE from start {summary['val_rmse_pct']:.2f} %, "
                      f"cold start {summary['val_cold_start_rmse_pct']:.2f} %")


def evaluate(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="Model folder of any kind (lstm, projected-lstm, "
                                 "ekf, ...)."),
    dataset: Path = typer.Argument(..., help="Dataset folder to evaluate on."),
    split: str = typer.Option("test", "--split", help="Which split: train, val or test."),
    out: Path = typer.Option(None, "--out", help="Folder for evaluation.json and the figure "
                             "[default: reports/evaluate-<model>-<dataset>-<split>]; the model "
                             "folder itself is never written to."),
    start_fraction: float = typer.Option(0.25, "--start-fraction", help="Cold start: where in "
                                         "the cycle the estimator is switched on."),
    convergence_s: float = typer.Option(300.0, "--convergence-s", help="Cold start: error "
                                        "counted only after this many seconds."),
    json_output: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Accuracy of any model on a dataset split: RMSE, MAE, max |error| in SOC %.

    Overall, per cycle and per temperature, in three scenarios: from the
    first sample, cold start (switched on 25 % into the cycle) and degraded
    sensors (current offset, voltage noise, lagging temperature). A model
    with an uncertainty (EKF, fusion) is also scored on calibration: the
    share of samples within 1 and 2 of its standard deviations, per
    temperature. Writes evaluation.json and soc_per_cycle.png.
    """
    import json

    from rich.markup import escape
    from rich.table import Table

    from bsoc import __version__
    from bsoc.data.dataset import Dataset
    from bsoc.estimator import load_estimator
    from bsoc.evaluate import SCENARIOS, ScenarioSettings, evaluate_runs, plot_runs

    estimator = load_estimator(model)
    data = Dataset.load(dataset)
    cycles = data.split(split)
    settings = ScenarioSettings(start_fraction=start_fraction, convergence_s=convergence_s)
    with progress(transient=True) as bar:
        task = bar.add_task("evaluating", total=len(cycles) * len(SCENARIOS), info="")
        result, runs = evaluate_runs(estimator, cycles, settings,
                                     on_cycle=lambda name: bar.update(task, advance=1, info=name))
    out = out or Path("reports") / f"evaluate-{model.name}-{Path(data.name).name}-{split}"
    out.mkdir(parents=True, exist_ok=True)
    figure = plot_runs(runs, out / "soc_per_cycle.png", title=f"{estimator.name} on {data.name}")
    report = {
        "model": str(model), "name": estimator.name, "kind": estimator.kind,
        "learnables": estimator.learnables(), "bytes": estimator.weight_bytes(),
        "macs_per_sample": estimator.macs_per_sample(),
        "dataset": data.name, "data_fingerprint": data.fingerprint(), "split": split,
        **result,
        "figure": str(figure), "command": running_command(ctx), "bsoc_version": __version__,
    }
    (out / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    if json_output:
        emit_json(report)
        return
    table = Table(title=escape(f"{estimator.name} ({estimator.kind}) on {data.name} [{split}], "
                               f"{len(cycles)} cycles, SOC error in %"))
    calibrated = "calibration" in result
    # the slowest cycle's: first back within the band, and within it from then on
    columns = ["scenario", "RMSE", "MAE", "max |err|", "re-acquired [s]", "converged [s]"]
    for column in columns + (["within ±1σ / ±2σ [%]"] if calibrated else []):
        table.add_column(escape(column), justify="left" if column == "scenario" else "right")
    for name, scenario in result["scenarios"].items():
        cells = [f"{scenario[k]:.2f}" for k in ("rmse_pct", "mae_pct", "max_abs_err_pct")]
        for key in ("reacquisition_s", "convergence_s"):
            seconds = scenario.get(key)
            cells.append("-" if key not in scenario else
                         "not within band" if seconds is None else f"{seconds:.0f}")
        if calibrated:
            sigma = scenario["calibration"]
            cells.append(f"{100 * sigma['within_1_sigma']:.0f} / "
                         f"{100 * sigma['within_2_sigma']:.0f}")
        table.add_row(name, *cells)
    out_console.print(table)  # the result: stdout, like --json; messages stay on stderr
    if calibrated:
        by_t = ", ".join(f"{row['temperature_c']:g} °C {100 * row['within_2_sigma']:.0f} %"
                         for row in result["calibration"]["by_temperature"])
        out_console.print(f"from start, within ±2σ by temperature: {by_t}")
    err_console.print(f"results in {out / 'evaluation.json'}, figure {figure}")


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``evaluate`` to the root app."""
    app.command("train")(train)
    app.command("evaluate")(evaluate)
