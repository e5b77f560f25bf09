"""``bsoc pipeline``: from nothing to a report in one command.

simulate (or a given dataset, and cells simulated to pretrain on) -> train -> compress by
projection -> fine-tune -> SVD baseline at equal learnables -> fine-tune it -> projection/SVD
sweep -> EKF fit -> fusion (the fine-tuned projected LSTM and the EKF's ECM inside one
filter) -> int8 of the fine-tuned projection, exported as ONNX and C -> benchmark
(with the exported C measured) -> report.

Every step is an ordinary ``bsoc`` command, run in-process and printed first, so any step
can be rerun by hand with exactly the same effect. A step is skipped when its output was
made from the same inputs (parameters, content fingerprints of what it reads and of bsoc's
own source, see :mod:`bsoc.pipeline_steps`); change the data or the program and everything
downstream reruns.
"""

from __future__ import annotations

import hashlib
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bsoc.command_lines import CommandLines
from bsoc.data.dataset import Dataset
from bsoc.data.simulate import SIMULATED_BY
from bsoc.errors import OverwriteRefusedError
from bsoc.outputs import check_inputs
from bsoc.pipeline_steps import STEP_FILE, fingerprint_path, run_step
from bsoc.profiles import RunProfile, run_profile

# The compressed model is exported to int8 C, whose step reads weights by quads of columns
# (bsoc.export.c_source.grouped_pairs): ranks that are multiples of four waste no padding.
RANK_MULTIPLE = 4


@dataclass(frozen=True)
class PipelinePlan:
    """Where everything goes and how hard each step works."""

    profile: str
    run: str
    data: Path
    simulate: bool
    seed: int = 0
    learnables_reduction: float | None = None  # None: the profile's
    pretrain: bool = False  # on simulated cells first (the profile's pretraining)
    threads: int | None = None  # torch threads to train with; None: the profile's
    root: Path = Path(".")

    @property
    def sizes(self) -> RunProfile:
        return run_profile(self.profile)

    @property
    def reduction(self) -> float:
        if self.learnables_reduction is not None:
            return self.learnables_reduction
        return self.sizes.learnables_reduction

    @property
    def pretraining_data(self) -> Path:
        """Per run, so that runs with other seeds never share (or overwrite) it."""
        return self.root / "data" / f"{self.run}-pretraining"

    @property
    def models(self) -> Path:
        return self.root / "models" / self.run

    @property
    def report(self) -> Path:
        return self.root / "reports" / self.run

    @property
    def benchmark(self) -> Path:
        return self.report / "benchmark"


@dataclass
class Step:
    name: str
    output: Path
    argv: list[str]
    reads: list[Path] = field(default_factory=list)
    artefact: str = "config.json"  # the file in ``output`` that the step writes
    force: list[str] = field(default_factory=list)  # the words that let it replace its output

    def overwrites_foreign_output(self) -> bool:
        """True when ``output`` holds an artefact this pipeline did not make (a user's)."""
        return (self.output / self.artefact).exists() and not (self.output / STEP_FILE).exists()


def pretrains_by_default(data: Path | None) -> bool:
    """Pretrain for a given dataset of measured cells; simulated cells gain nothing from it."""
    if data is None:
        return False
    return Dataset.manifest(data).get("provenance", {}).get("made_by") != SIMULATED_BY


def plan_steps(plan: PipelinePlan, lines: CommandLines) -> list[Step]:
    """The commands of one pipeline run, in order, spelled by ``lines`` (bsoc's commands)."""
    sizes, models, seed = plan.sizes, plan.models, plan.seed
    lstm, projected, svd = models / "lstm", models / "projected", models / "svd"
    projected_ft, svd_ft, ekf = models / "projected-ft", models / "svd-ft", models / "ekf"
    fusion = models / "fusion"
    sweep = plan.report / "sweep"

    def step(name: str, output: Path, command: str, *arguments: Any, reads: list[Path],
             artefact: str = "config.json", **options: Any) -> Step:
        return Step(name, output, lines(command, *arguments, **options), reads, artefact,
                    lines.force(command))

    steps = []
    if plan.simulate:
        steps.append(step("simulate", plan.data, "data simulate", reads=[],
                          artefact="manifest.json", profile=plan.profile, seed=seed,
                          out=plan.data))
    steps.append(step("inspect data", plan.report / "data", "data inspect", plan.data,
                      reads=[plan.data], artefact="summary.json", out=plan.report / "data"))
    # fine-tuning inherits the threads from the model's recorded training
    training = {"profile": plan.profile, "seed": seed, "threads": plan.threads}
    init_from: dict[str, Path] = {}
    if plan.pretrain:
        pretrained, pretraining = models / "pretrained", plan.pretraining_data
        steps += [
            step("simulate (pretraining cells)", pretraining, "data simulate", reads=[],
                 artefact="manifest.json", profile=sizes.pretraining_cells, seed=seed,
                 out=pretraining),
            step("pretrain (simulated cells)", pretrained, "train", reads=[pretraining],
                 data=pretraining, out=pretrained, **training, epochs=sizes.pretraining_epochs,
                 max_minutes=sizes.pretraining_max_minutes),
        ]
        init_from = {"init_from": pretrained}
    finetune = {"epochs": sizes.finetune_epochs, "max_minutes": sizes.finetune_max_minutes,
                "seed": seed}
    steps += [
        step("train", lstm, "train", reads=[plan.data, *init_from.values()], data=plan.data,
             out=lstm, **training, **init_from),
        step("compress (projection)", projected, "compress", lstm, reads=[plan.data, lstm],
             data=plan.data, out=projected, learnables_reduction=plan.reduction,
             rank_multiple=RANK_MULTIPLE),
        step("fine-tune (projection)", projected_ft, "finetune", projected,
             reads=[plan.data, projected], data=plan.data, out=projected_ft, **finetune),
        step("compress (SVD, same learnables)", svd, "compress", lstm, reads=[plan.data, lstm],
             data=plan.data, out=svd, method="svd", learnables_reduction=plan.reduction,
             rank_multiple=RANK_MULTIPLE),
        step("fine-tune (SVD)", svd_ft, "finetune", svd, reads=[plan.data, svd],
             data=plan.data, out=svd_ft, **finetune),
        step("sweep (projection vs SVD)", sweep, "compress", lstm, reads=[plan.data, lstm],
             artefact="sweep.json", data=plan.data, sweep=True, out=sweep),
        step("EKF fit", ekf, "ekf fit", plan.data, reads=[plan.data], out=ekf),
        # the compressed network is what a BMS runs; the ECM adds its start from the voltage
        # at rest and the voltage as a second measurement (README, "Fusion estimator")
        step("fuse (projected, fine-tuned + ECM)", fusion, "fuse",
             reads=[plan.data, projected_ft, ekf], lstm=projected_ft, ekf=ekf, data=plan.data,
             out=fusion),
    ]
    # the compressed model made ready for a microcontroller: int8 (its accuracy is the
    # benchmark's to measure), then ONNX and C beside it
    int8, deploy = models / "projected-ft-int8", models / "deploy"
    steps.append(step("quantize (projection, fine-tuned)", int8, "quantize", projected_ft,
                      reads=[projected_ft], out=int8))
    steps += [step(f"export ({fmt})", deploy / fmt, "export", int8, reads=[int8],
                   artefact="export.json", fmt=fmt, out=deploy / fmt) for fmt in ("onnx", "c")]
    benchmark_models = [lstm, projected, projected_ft, int8, svd, svd_ft, ekf, fusion]
    steps += [
        step("benchmark", plan.benchmark, "benchmark", reads=[plan.data, *benchmark_models],
             artefact="benchmark.json", data=plan.data, out=plan.benchmark,
             models=benchmark_models, quick=sizes.quick_benchmark),
        step("report", plan.report, "report", plan.benchmark, reads=[plan.benchmark, sweep],
             artefact="report.html", out=plan.report, sweep=[sweep / "sweep.json"],
             title=f"bsoc report: {plan.run}"),
    ]
    return steps


def source_fingerprint() -> str:
    """Hash of bsoc's own source: a changed program makes every step's output stale."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for file in sorted(package.rglob("*.py")):
        digest.update(str(file.relative_to(package)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def _fingerprint(path: Path) -> str:
    manifest = path / "manifest.json"
    return fingerprint_path(manifest) if manifest.is_file() else fingerprint_path(path)


def run_pipeline(
    plan: PipelinePlan,
    lines: CommandLines,
    invoke: Callable[[list[str]], None],
    log: Callable[[str], None],
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Run the steps through ``invoke(argv)`` (the CLI), skipping those that are up to date."""
    timings: dict[str, float] = {}
    code = source_fingerprint()
    steps = plan_steps(plan, lines)  # an unknown profile is refused here, before any step
    if not plan.simulate:  # a given dataset must lie outside every folder the run writes
        for step in steps:
            check_inputs(step.output, [plan.data],
                         remedy="choose another --run, or keep the dataset outside models/ "
                         "and reports/")
    # before any step runs: a full run would otherwise train for many minutes first
    foreign = [step.output for step in steps if step.overwrites_foreign_output()]
    if foreign and not force:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise OverwriteRefusedError(
            f"{foreign[0]}{more} exists and was not made by this pipeline",
            remedy="move it away, choose another --run, or pass --force",
        )
    for step in steps:
        inputs = {"argv": step.argv, "reads": {str(p): _fingerprint(p) for p in step.reads},
                  "bsoc_source": code}
        argv = [*step.argv, *step.force]
        started = time.perf_counter()

        def action(argv: list[str] = argv) -> None:
            log(f"[cyan]$ bsoc {shlex.join(argv)}[/]")
            invoke(argv)

        if run_step(step.name, step.output, inputs, action, log):
            timings[step.name] = round(time.perf_counter() - started, 1)
    return {"report": str(plan.report / "report.html"), "benchmark":
            str(plan.benchmark / "benchmark.json"), "seconds_per_step": timings}
