"""``bsoc ekf fit``: identify the equivalent-circuit model and tune the EKF on a dataset.

Heavy imports (scipy, matplotlib) happen inside the command so ``bsoc --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from bsoc.command_lines import running_command
from bsoc.console import emit_json, err_console, progress, stage_progress

ekf_app = typer.Typer(
    help="The EKF baseline: equivalent-circuit model identified from data + Kalman filter.",
    no_args_is_help=True,
)


@ekf_app.command("fit")
def fit(
    ctx: typer.Context,
    dataset: Path = typer.Argument(..., help="Dataset folder (manifest.json + cycles/)."),
    out: Path = typer.Option(Path("models/ekf"), "--out", help="Model folder to write."),
    force: bool = typer.Option(
        False, "--force", help="Replace the model bsoc wrote at --out (other files stay)."
    ),
    json_output: bool = typer.Option(
        False, "--json", help="Print the fit summary as JSON on stdout."
    ),
) -> None:
    """Identify OCV, R0/R1/R2 and tau1/tau2 per temperature from the TRAIN split, tune the
    EKF noise on the TRAIN split, and write config.json plus voltage-fit figures."""
    import numpy as np

    from bsoc.data.dataset import Dataset
    from bsoc.ekf.fit import fit_ekf, save_ekf
    from bsoc.estimator import prepare_model_dir

    prepare_model_dir(out, force=force, inputs=[dataset])  # refuse early, before the fit
    data = Dataset.load(dataset)
    command = running_command(ctx)
    with progress() as bar:
        estimator, identifier = fit_ekf(data, command=command, on_progress=stage_progress(bar))
    files = save_ekf(estimator, identifier, out, force=True)
    summary = {
        "model": str(out),
        "kind": estimator.kind,
        "learnables": estimator.learnables(),
        "voltage_rmse_mv": {
            f"{row['ambient_c']:g}": round(row["voltage_rmse_mv"], 2)
            for row in identifier.report_["by_temperature"]
        },
        "noise": estimator.noise.to_json(),
        "tuning_objective_pct": estimator.metadata["tuning"]["objective_pct"],
        "files": [str(f) for f in files],
    }
    if json_output:
        emit_json(summary)
        return
    err_console.print(f"[bold green]EKF written to {out}[/] ({estimator.learnables()} parameters)")
    for ambient, rmse in summary["voltage_rmse_mv"].items():
        err_console.print(f"  ECM voltage RMSE at {ambient} degC: {rmse:.1f} mV")
    noise = summary["noise"]
    err_console.print(
        f"  noise: soc {noise['soc_std']:.1e}/sqrt(s), rc {noise['rc_std']:.1e} V/sqrt(s), "
        f"voltage {', '.join(f'{1e3 * v:.1f}' for v in np.atleast_1d(noise['voltage_std']))} mV; "
        "train SOC RMSE (objective) "
        f"{summary['tuning_objective_pct']:.2f} %"
    )


def register(app: typer.Typer) -> None:
    """Add the ``ekf`` sub-commands to the root app."""
    app.add_typer(ekf_app, name="ekf")
