"""``bsoc compress``, ``bsoc finetune`` and ``bsoc unpack``: compression of a trained network.

Heavy imports (torch, matplotlib) happen inside the commands so ``bsoc --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from bsoc.command_lines import running_command
from bsoc.console import emit_json, err_console, progress, training_progress
from bsoc.outputs import OutputKind, check_output, write_output

SWEEP_FILE = "sweep.json"
SWEEP_META_FILE = "sweep.meta.json"
ANALYSIS_FILE = "analysis.json"
ANALYSIS_FIGURE = "explained_variance.png"
ANALYSIS_OUTPUT = OutputKind("analysis", signature=ANALYSIS_FILE,
                             legacy_files=(ANALYSIS_FILE, ANALYSIS_FIGURE),
                             legacy_mark="pca_samples")
SWEEP_OUTPUT = OutputKind("sweep", signature=SWEEP_FILE, legacy_files=(SWEEP_FILE, SWEEP_META_FILE),
                          legacy_mark="projection")


def _pca_progress(bar: Any, description: str) -> Any:
    task = bar.add_task(description, total=None, info="")
    return lambda done, total: bar.update(task, completed=done, total=total, info="time steps")


def _goal(explained_variance: float | None, learnables_reduction: float | None,
          ranks: list[str] | None, rank_multiple: int = 1) -> Any:
    from bsoc.compress.goals import Goal

    parsed = Goal.parse_ranks(ranks).ranks if ranks else None
    return Goal(explained_variance=explained_variance, learnables_reduction=learnables_reduction,
                ranks=parsed, rank_multiple=rank_multiple)


def compress(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="Trained model folder (kind lstm) to compress."),
    data: Path = typer.Option(..., "--data", help="Dataset folder: its train split feeds the "
                              "neuron PCA, its val split measures the result."),
    out: Path = typer.Option(..., "--out", help="Model folder to write (with --analyze or "
                             "--sweep: folder for analysis.json + figure, or sweep.json)."),
    explained_variance: float = typer.Option(None, "--explained-variance", help="Goal: per "
                                             "layer, the smallest rank keeping this fraction of "
                                             "the neurons' variance, e.g. 0.99."),
    learnables_reduction: float = typer.Option(None, "--learnables-reduction", help="Goal: "
                                               "this fraction fewer learnables in the whole "
                                               "network, e.g. 0.9 (one explained-variance "
                                               "level for all layers, found by search)."),
    ranks: list[str] = typer.Option(None, "--ranks", help="Goal: explicit ranks per layer, "
                                    "LAYER=B_IN,B_OUT (fc: one rank); repeat the option or "
                                    "quote a list: --ranks 'lstm_1=3,11 lstm_2=11,8'."),
    rank_multiple: int = typer.Option(1, "--rank-multiple", help="With --explained-variance "
                                      "or --learnables-reduction: round every rank up to a "
                                      "multiple of this (4 suits the exported int8 C step, "
                                      "whose weights go by quads of columns)."),
    layers: str = typer.Option(None, "--layers", help="Comma-separated layers to project "
                               "[default: lstm_1,lstm_2,fc]; a layer whose ranks would not "
                               "reduce its learnables is left as it is (and reported)."),
    method: str = typer.Option("projection", "--method", help="projection (neuron PCA, the "
                               "product) or svd (truncated SVD of each weight matrix, baseline)."),
    svd_ranks: str = typer.Option("matched", "--svd-ranks", help="With --method svd: matched "
                                  "(the ranks projection picks for the goal: equal learnables) "
                                  "or energy (from the singular values alone, data-free)."),
    mean_handling: str = typer.Option("fold-into-bias", "--mean", help="How the neurons' mean "
                                      "is kept: fold-into-bias (centred PCA, mean folded into "
                                      "the bias) or second-moment (uncentred PCA)."),
    analyze: bool = typer.Option(False, "--analyze", help="Only analyse: print per layer the "
                                 "neurons, the ranks for 90/95/99/99.9 % explained variance "
                                 "and the learnables they give; save the curves' figure."),
    sweep: bool = typer.Option(False, "--sweep", help="Sweep explained-variance goals; write "
                               "OUT/sweep.json with RMSE (val, from start, no fine-tuning) vs "
                               "learnables for projection and SVD at equal learnables."),
    force: bool = typer.Option(False, "--force", help="Replace the output bsoc wrote at --out "
                               "(other files there are kept)."),
    json_output: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Compress a trained SOC network by projection (or truncated SVD, for comparison).

    Runs the network over the training split, eigen-decomposes each layer's neuron
    covariance, and replaces layers by projected layers of the same width whose weights
    absorb the projectors (W_in = W Q). Writes a model folder (kind projected-lstm or
    svd-lstm) whose config.json records goal, ranks, explained variance kept, learnables
    before/after and the validation RMSE right after compression. Fine-tune it next with
    'bsoc finetune'.
    """
    from bsoc.data.dataset import Dataset

    chosen = [name.strip() for name in layers.split(",")] if layers else None
    dataset = Dataset.load(data)
    if analyze or sweep:
        if analyze and sweep:
            from bsoc.errors import ConfigError

            raise ConfigError("--analyze and --sweep are separate runs", remedy="pick one")
        run = _analyze if analyze else _sweep
        check_output(out, ANALYSIS_OUTPUT if analyze else SWEEP_OUTPUT, force=force,
                     inputs=[model, data])  # refuse early, before the PCA
        run(model, dataset, out, chosen, mean_handling, force, json_output, running_command(ctx))
        return
    from bsoc.estimator import prepare_model_dir

    goal = _goal(explained_variance, learnables_reduction, ranks, rank_multiple)
    prepare_model_dir(out, force=force, inputs=[model, data])  # refuse early, before the PCA
    _compress(model, dataset, out, goal, method, chosen, mean_handling, svd_ranks, json_output,
              running_command(ctx))


def _compress(model: Path, dataset: Any, out: Path, goal: Any, method: str,
              layers: list[str] | None, mean_handling: str, svd_ranks: str,
              json_output: bool, command: str) -> None:
    from rich.table import Table

    from bsoc.compress.workflow import compress_model

    with progress(transient=True) as bar:
        estimator, record = compress_model(
            model, dataset, out, goal, method=method, layers=layers, mean_handling=mean_handling,
            svd_ranks=svd_ranks, command=command, force=True,
            on_progress=_pca_progress(bar, "neuron PCA"))
    compression = estimator.metadata["compression"]
    summary = {
        "model": str(out), "kind": estimator.kind, "goal": compression["goal"],
        "level": compression["level"], "ranks": compression["ranks"],
        "learnables_before": record.learnables_before, "learnables_after": record.learnables_after,
        "learnables_reduction": compression["learnables_reduction"],
        "skipped": record.skipped(),
        "source_val_rmse_pct": compression["source_model"]["val_rmse_pct"],
        "val_rmse_pct": estimator.metadata["validation"]["rmse_pct"],
    }
    if json_output:
        emit_json(summary)
        return
    table = Table(title=f"{method} of {model} ({goal.describe()})")
    for column in ("layer", "ranks (in, out)", "kept", "learnables before", "after"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for name, plan in record.plans.items():
        kept = ", ".join(f"{v:.4f}" for v in plan.explained_variance_kept.values())
        ranks = ", ".join(map(str, plan.ranks.values()))
        table.add_row(name, ranks if plan.projected else "not projected",
                      kept if plan.projected else "-", f"{plan.learnables_before:,}",
                      f"{plan.learnables_after:,}")
    err_console.print(table)
    for note in summary["skipped"]:
        err_console.print(f"  [yellow]note:[/] {note}")
    before = summary["source_val_rmse_pct"]
    err_console.print(
        f"[bold green]{estimator.kind} written to {out}[/]: {record.learnables_before:,} -> "
        f"{record.learnables_after:,} learnables ({summary['learnables_reduction']:.1%} fewer); "
        f"val RMSE {'?' if before is None else f'{before:.2f}'} % -> "
        f"{summary['val_rmse_pct']:.2f} % (before fine-tuning)")


def _analyze(model: Path, dataset: Any, out: Path, layers: list[str] | None,
             mean_handling: str, force: bool, json_output: bool, command: str) -> None:
    from rich.table import Table

    from bsoc.compress.workflow import analyze, fit_pca
    from bsoc.nn.estimator import LstmSocEstimator
    from bsoc.report.figures import explained_variance

    source = LstmSocEstimator.load(model)
    with progress(transient=True) as bar:
        pca = fit_pca(source.network, dataset, mean_handling,
                      _pca_progress(bar, "neuron PCA"))
    result = analyze(source.network, pca)
    shown = [row for row in result["layers"] if layers is None or row["layer"] in layers]
    figure = out / ANALYSIS_FIGURE
    result.update(model=str(model), command=command, figure=str(figure),
                  data={"name": dataset.name, "fingerprint": dataset.fingerprint()})
    with write_output(out, ANALYSIS_OUTPUT, force=force) as folder:
        explained_variance(result["explained_variance"]).savefig(folder / ANALYSIS_FIGURE, dpi=110)
        (folder / ANALYSIS_FILE).write_text(json.dumps(result, indent=2) + "\n")
    if json_output:
        emit_json(result)
        return
    levels = [str(level) for level in result["levels"]]
    table = Table(title=f"neuron PCA of {model} ({mean_handling}): ranks (in, out) -> learnables")
    table.add_column("layer")
    table.add_column("neurons (in, out)", justify="right")
    table.add_column("learnables", justify="right")
    for level in levels:
        table.add_column(f"{float(level):.1%}", justify="right")
    for row in shown:
        cells = []
        for level in levels:
            at = row["levels"][level]
            mark = "" if at["projected"] else " (skip)"
            ranks = ",".join(map(str, at["ranks"].values()))
            cells.append(f"{ranks} -> {at['learnables']:,}{mark}")
        table.add_row(row["layer"], ", ".join(map(str, row["neurons"].values())),
                      f"{row['learnables']:,}", *cells)
    table.add_row("network", "", f"{result['network_learnables']:,}",
                  *(f"{result['network_learnables_at_level'][level]:,}" for level in levels))
    err_console.print(table)
    err_console.print(f"analysis in {out / ANALYSIS_FILE}, figure {figure}")


def _sweep(model: Path, dataset: Any, out: Path, layers: list[str] | None,
           mean_handling: str, force: bool, json_output: bool, command: str) -> None:
    from bsoc import __version__
    from bsoc.compress.workflow import SWEEP_LEVELS, sweep
    from bsoc.nn.estimator import LstmSocEstimator

    source = LstmSocEstimator.load(model)
    with progress() as bar:
        task = bar.add_task("sweep", total=2 * len(SWEEP_LEVELS), info="")

        def on_point(method: str, point: dict[str, Any]) -> None:
            bar.update(task, advance=1, info=f"{method} {point['learnables']:,} learnables "
                                             f"{point['rmse_pct']:.2f} %")

        points = sweep(source, dataset, layers=layers, mean_handling=mean_handling,
                       on_progress=_pca_progress(bar, "neuron PCA"), on_point=on_point)
    meta = {"model": str(model), "model_learnables": source.learnables(),
            "data": {"name": dataset.name, "fingerprint": dataset.fingerprint(), "split": "val"},
            "levels": list(SWEEP_LEVELS), "mean_handling": mean_handling,
            "rmse": "from the first sample, validation split, no fine-tuning",
            "command": command, "bsoc_version": __version__}
    with write_output(out, SWEEP_OUTPUT, force=force) as folder:
        (folder / SWEEP_FILE).write_text(json.dumps(points, indent=2) + "\n")
        (folder / SWEEP_META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if json_output:
        emit_json(points)
        return
    for method, rows in points.items():
        err_console.print(f"[bold]{method}[/]: " + "; ".join(
            f"{p['learnables']:,} -> {p['rmse_pct']:.2f} %" for p in rows))
    err_console.print(f"sweep in {out / SWEEP_FILE} (provenance in {SWEEP_META_FILE})")


def finetune(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="Model folder to fine-tune (e.g. a projected-lstm)."),
    data: Path = typer.Option(..., "--data", help="Dataset folder with train and val splits: "
                              "the one the model was trained and compressed on, or another "
                              "cell's, to transfer the model to it."),
    out: Path = typer.Option(..., "--out", help="Model folder to write (same kind as MODEL)."),
    epochs: int = typer.Option(None, "--epochs", min=1, help="Epochs [default: 10]."),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate [default: a tenth of the "
                             "rate the model was trained with]."),
    max_minutes: float = typer.Option(None, "--max-minutes", help="Stop after this many "
                                      "minutes (the best weights so far are kept)."),
    seed: int = typer.Option(None, "--seed", help="Seed for windows and dropout [default: the "
                             "model's training seed]."),
    force: bool = typer.Option(False, "--force", help="Replace the model bsoc wrote at --out "
                               "(other files there are kept)."),
    json_output: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Retrain all learnables of a (compressed) network for a few epochs at a lower rate.

    Uses the training loop of 'bsoc train' (same windows, validation, early stopping:
    the best validated weights are kept, so the result is never worse on val than the
    input). Records the validation RMSE before and after in OUT/config.json.
    """
    from bsoc.compress.finetune import finetune_model
    from bsoc.data.dataset import Dataset
    from bsoc.estimator import prepare_model_dir

    prepare_model_dir(out, force=force, inputs=[model, data])
    dataset = Dataset.load(data)
    with progress() as bar:
        on_step = training_progress(bar, bar.add_task("fine-tuning", total=None, info=""))

        estimator, result, record = finetune_model(
            model, dataset, out, epochs=epochs, learning_rate=lr, max_minutes=max_minutes,
            seed=seed, command=running_command(ctx), force=True, on_step=on_step)
    summary = {
        "model": str(out), "kind": estimator.kind, "learnables": estimator.learnables(),
        "val_rmse_pct_before": record["val_rmse_pct_before"],
        "val_rmse_pct_after": record["val_rmse_pct_after"],
        "best_epoch": result.best_epoch, "stopped": result.stopped, "seconds": result.seconds,
    }
    if json_output:
        emit_json(summary)
        return
    err_console.print(f"[bold green]fine-tuned {estimator.kind} written to {out}[/] "
                      f"({summary['learnables']:,} learnables, best epoch {result.best_epoch}, "
                      f"{result.stopped})")
    err_console.print(f"  validation RMSE {summary['val_rmse_pct_before']:.2f} % -> "
                      f"{summary['val_rmse_pct_after']:.2f} %")


def unpack(
    model: Path = typer.Argument(..., help="Compressed model folder (projected-lstm, svd-lstm)."),
    out: Path = typer.Option(..., "--out", help="Model folder to write (kind lstm)."),
    force: bool = typer.Option(False, "--force", help="Replace the model bsoc wrote at --out "
                               "(other files there are kept)."),
    json_output: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Turn projected layers back into plain LSTM/FC layers holding the product weights.

    The outputs are the same (to float rounding); the size is the uncompressed one. For
    deployment targets that only run plain LSTMs.
    """
    from bsoc.compress.unpack import unpack_network
    from bsoc.estimator import prepare_model_dir
    from bsoc.nn.estimator import LstmSocEstimator

    prepare_model_dir(out, force=force, inputs=[model])
    source = LstmSocEstimator.load(model)
    plain = LstmSocEstimator(unpack_network(source.network), kind="lstm", name=out.name,
                             metadata={**source.metadata, "unpacked_from": str(model)})
    plain.save(out, force=True)
    summary = {"model": str(out), "kind": "lstm", "learnables": plain.learnables(),
               "packed_learnables": source.learnables()}
    if json_output:
        emit_json(summary)
        return
    err_console.print(f"[bold green]plain model written to {out}[/] ({source.learnables():,} -> "
                      f"{plain.learnables():,} learnables, same outputs)")


def register(app: typer.Typer) -> None:
    """Add ``compress``, ``finetune`` and ``unpack`` to the root app."""
    app.command("compress")(compress)
    app.command("finetune")(finetune)
    app.command("unpack")(unpack)
