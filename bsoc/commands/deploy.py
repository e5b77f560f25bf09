"""``bsoc quantize`` and ``bsoc export``: a trained network made ready for a microcontroller.

Heavy imports (torch, onnx) happen inside the commands so ``bsoc --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from bsoc.command_lines import running_command
from bsoc.console import emit_json, err_console


def quantize(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="Float model folder (lstm, projected-lstm, svd-lstm)."),
    out: Path = typer.Option(..., "--out", help="Model folder to write (kind <kind>-int8)."),
    data: Path = typer.Option(None, "--data", help="Dataset folder: measure the float and the "
                              "int8 model on its val split and record both (optional; "
                              "weight-only int8 needs no calibration data)."),
    activations: str = typer.Option("float32", "--activations", help="float32: weight-only "
                                    "int8 (kind <kind>-int8); int16: full integer, int16 "
                                    "activations scaled per vector and step (kind "
                                    "<kind>-w8a16), the fastest C on a microcontroller."),
    force: bool = typer.Option(False, "--force", help="Replace the model bsoc wrote at --out "
                               "(other files there are kept)."),
    json_output: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Quantise a network's weights to int8 (symmetric), weight-only or with int16
    activations (--activations int16: integer matrix products).

    Every weight-map factor (projectors included) becomes int8 values with one float32
    scale per output neuron, except a projected map's last factor: scaled per input (per
    rank component), its scales folded into the projector's, so it is stored without
    scales. Biases and state stay float32 (and the activations, unless
    --activations int16). The result is a
    model folder like any other: benchmark, evaluate, serve and export take it.
    """
    from bsoc.compress.quantize_model import quantize_model
    from bsoc.data.dataset import Dataset
    from bsoc.estimator import prepare_model_dir

    prepare_model_dir(out, force=force, inputs=[model, data])
    dataset = Dataset.load(data) if data is not None else None
    estimator, record = quantize_model(model, out, data=dataset, command=running_command(ctx),
                                       force=True, activations=activations)
    summary = {"model": str(out), "kind": estimator.kind, "learnables": estimator.learnables(),
               **{k: record[k] for k in ("weight_bytes_float32", "weight_bytes", "int8_bytes",
                                         "scale_bytes", "float32_bias_bytes")},
               "val_rmse_pct_float": record.get("val_rmse_pct_float"),
               "val_rmse_pct_int8": record.get("val_rmse_pct_int8")}
    if json_output:
        emit_json(summary)
        return
    err_console.print(
        f"[bold green]{estimator.kind} written to {out}[/]: {summary['weight_bytes_float32']:,} -> "
        f"{summary['weight_bytes']:,} bytes of weights ({summary['int8_bytes']:,} int8 + "
        f"{summary['scale_bytes']:,} scales + {summary['float32_bias_bytes']:,} float32 biases)")
    if dataset is not None:
        err_console.print(f"  validation RMSE {summary['val_rmse_pct_float']:.2f} % (float) -> "
                          f"{summary['val_rmse_pct_int8']:.2f} % (int8)")


def export(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="Model folder (lstm, projected-lstm, svd-lstm, or "
                                 "an -int8 one)."),
    fmt: str = typer.Option(..., "--format", help="onnx (step and sequence graphs) or c "
                            "(a dependency-free C99 library for a microcontroller)."),
    out: Path = typer.Option(..., "--out", help="Folder to write the exported files and "
                             "export.json into."),
    force: bool = typer.Option(False, "--force", help="Replace the export bsoc wrote at --out "
                               "(other files there are kept)."),
    json_output: bool = typer.Option(False, "--json", help="Print export.json's record."),
) -> None:
    """Export a SOC network for deployment.

    onnx: bsoc_step.onnx (samples (B, 4) and state (B, S) in, soc (B,) and new_state out)
    and bsoc_sequence.onnx (samples (B, T, 4) in, soc (B, T) out), standard operators,
    an int8 model's weights kept int8.

    c: bsoc_model.h/.c with bsoc_init(state) and bsoc_step(state, v, i, t) -> soc,
    weights as const arrays (int8 with scales for an int8 model), no malloc, no libm;
    a README says how to call it from firmware; run_cycle.c checks it on a host.
    """
    from bsoc.export.write import export_model

    record = export_model(model, out, fmt, force=force, command=running_command(ctx))
    if json_output:
        emit_json(record)
        return
    err_console.print(f"[bold green]{record['kind']} exported as {fmt} to {out}[/]: "
                      f"{', '.join(record['files'])} ({record['weights']} weights, state of "
                      f"{record['state_size']} floats)")


def register(app: typer.Typer) -> None:
    """Add ``quantize`` and ``export`` to the root app."""
    app.command("quantize")(quantize)
    app.command("export")(export)
