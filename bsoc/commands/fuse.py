"""``bsoc fuse``: put a trained LSTM (of any kind) inside the fusion filter.

Heavy imports (torch, numba, matplotlib) happen inside the command so ``bsoc --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from bsoc.command_lines import running_command
from bsoc.console import emit_json, err_console, progress, stage_progress

NOISE_FIGURE = "noise_model.png"


def fuse(
    ctx: typer.Context,
    lstm: Path = typer.Option(..., "--lstm", help="LSTM model folder of any kind (lstm, "
                              "projected-lstm, svd-lstm, their int8 versions)."),
    data: Path = typer.Option(..., "--data", help="Dataset folder: the noise model is fitted "
                              "on its train split, the filter tuned on its val split (train "
                              "without one); test cycles are never read."),
    out: Path = typer.Option(..., "--out", help="Model folder to write, e.g. models/fusion."),
    ekf: Path = typer.Option(None, "--ekf", help="An EKF model folder ('bsoc ekf fit'): its "
                             "ECM adds the terminal voltage as a second measurement (and the "
                             "start from the voltage at rest)."),
    force: bool = typer.Option(False, "--force", help="Replace the model bsoc wrote at --out "
                               "(other files there are kept)."),
    json_output: bool = typer.Option(False, "--json", help="Print the fit summary as JSON."),
) -> None:
    """Fit the fusion estimator: coulomb counting with a current-offset state, corrected by
    the LSTM's SOC as a measurement whose noise is learned from the training split.

    Writes OUT/config.json (the LSTM's config embedded, the noise model, the
    tuned settings), OUT/model.safetensors (the LSTM's weights) and
    OUT/noise_model.png (the LSTM's error against the noise model's features).
    """
    from bsoc.data.dataset import Dataset
    from bsoc.ekf.estimator import EkfSocEstimator
    from bsoc.errors import ModelFileError
    from bsoc.estimator import MODEL_OUTPUT, load_estimator, prepare_model_dir
    from bsoc.fusion.figures import noise_figure
    from bsoc.fusion.fit import fit_fusion
    from bsoc.nn.estimator import LstmSocEstimator
    from bsoc.outputs import owned_files

    prepare_model_dir(out, force=force, inputs=[lstm, data, ekf])  # refuse early
    network = load_estimator(lstm)
    if not isinstance(network, LstmSocEstimator):
        raise ModelFileError(f"{lstm} holds a {network.kind!r} model, not an LSTM",
                             remedy="pass an LSTM model folder to --lstm")
    circuit = None
    if ekf is not None:
        circuit = load_estimator(ekf)
        if not isinstance(circuit, EkfSocEstimator):
            raise ModelFileError(f"{ekf} holds a {circuit.kind!r} model, not an EKF",
                                 remedy="pass a folder written by 'bsoc ekf fit' to --ekf")
    dataset = Dataset.load(data)
    metadata = {
        "data": {"name": dataset.name, "fingerprint": dataset.fingerprint()},
        "lstm_source": {"path": str(lstm), "kind": network.kind,
                        "trained_on": network.metadata.get("data", {})},
        "ekf_source": None if ekf is None else {"path": str(ekf)},
        "command": running_command(ctx),
        "seed": 0,  # the fit is deterministic; recorded for uniformity with the other models
    }
    with progress() as bar:
        estimator, evidence = fit_fusion(network, dataset, ekf=circuit, metadata=metadata,
                                         on_progress=stage_progress(bar))
    estimator.name = out.name
    estimator.save(out, force=True, extra=lambda folder: noise_figure(
        evidence.train, evidence.validation, folder / NOISE_FIGURE))
    fit = estimator.metadata["fit"]
    best = fit["tuning"]["best"]
    summary = {
        "model": str(out),
        "kind": estimator.kind,
        "lstm_kind": network.kind,
        "with_ecm": circuit is not None,
        "learnables": estimator.learnables(),
        "capacity_ah": estimator.capacity_ah,
        "noise_nll": {"constant_variance": fit["noise_model"]["nll_constant_variance"],
                      "model": fit["noise_model"]["nll_model"]},
        "settings": estimator.settings.to_json(),
        "tuning_split": fit["tuning"]["split"],
        "tuning_rmse_pct": best["rmse_pct"],
        "tuning_coverage_2_sigma": best["coverage_2_sigma"],
        "files": [str(out / name) for name in sorted(owned_files(out, MODEL_OUTPUT))
                  if not name.startswith(".")],
    }
    if json_output:
        emit_json(summary)
        return
    err_console.print(f"[bold green]fusion model written to {out}[/] ({network.kind} "
                      f"{'+ ECM voltage ' if circuit is not None else ''}inside the filter)")
    settings = estimator.settings
    err_console.print(
        f"  noise model NLL {summary['noise_nll']['model']:.3f} (constant variance "
        f"{summary['noise_nll']['constant_variance']:.3f}); settings: variance x"
        f"{settings.variance_scale:g}, slow share {settings.bias_fraction:g} over "
        f"{settings.bias_tau_s:g} s, fast error correlated over {settings.noise_tau_s:g} s, "
        f"current offset prior {settings.offset_std_c:g} C"
        + (f", voltage noise x{settings.voltage_factor:g}" if circuit is not None else ""))
    err_console.print(f"  {summary['tuning_split']} split: SOC RMSE {best['rmse_pct']:.2f} % "
                      "(mean over cycles x scenarios); within 2 sigma:")
    for scenario, cells in best["coverage_2_sigma"].items():
        coverage = ", ".join(f"{float(t):g} degC {100 * c:.1f} %" for t, c in cells.items())
        err_console.print(f"    {scenario}: {coverage}")


def register(app: typer.Typer) -> None:
    app.command("fuse")(fuse)
