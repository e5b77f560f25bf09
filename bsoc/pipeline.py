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

from bsoc.data.dataset import Dataset
from bsoc.data.simulate import SIMULATED_BY
from bsoc.errors import ConfigError, OverwriteRefusedError
from bsoc.outputs import check_inputs
from bsoc.pipeline_steps import STEP_FILE, fingerprint_path, run_step

PROFILES = ("tiny", "quick", "full")
# The tiny profile's network is too small for 90 % fewer learnables (rank-1 layers hold more).
DEFAULT_REDUCTION = {"tiny": 0.5, "quick": 0.9, "full": 0.9}
FINETUNE_EPOCHS = {"tiny": 2, "quick": 4, "full": 15}
# A full-profile epoch over the simulated full set takes minutes: bound fine-tuning by time
# too (the learning rate then anneals over the budget, see bsoc.train.training_progress).
# The quick profile's minute each keeps `make demo` within 15 minutes on 2 cores.
FINETUNE_BUDGET = {"tiny": [], "quick": ["--max-minutes", "1"], "full": ["--max-minutes", "8"]}
# On a user's own cells the network first learns from bsoc's simulated ones (which data
# profile, how long), then trains on the real cycles from there: the training ablation's
# best recipe (README, "Real cells"). The full profile pretrains on the quick set, which
# simulates in minutes, so that the whole training stays within an hour on 2 cores.
PRETRAINING = {"tiny": ("tiny", ["--epochs", "1"]), "quick": ("quick", ["--max-minutes", "2"]),
               "full": ("quick", ["--epochs", "20"])}


@dataclass(frozen=True)
class PipelinePlan:
    """Where everything goes and how hard each step works."""

    profile: str
    run: str
    data: Path
    simulate: bool
    seed: int = 0
    learnables_reduction: float | None = None  # None: the profile's DEFAULT_REDUCTION
    pretrain: bool = False  # on simulated cells first (see PRETRAINING)
    threads: int | None = None  # torch threads to train with; None: the profile's
    root: Path = Path(".")

    @property
    def reduction(self) -> float:
        if self.learnables_reduction is not None:
            return self.learnables_reduction
        return DEFAULT_REDUCTION[self.profile]

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
    takes_force: bool = True  # the command refuses to overwrite its output without --force

    def overwrites_foreign_output(self) -> bool:
        """True when ``output`` holds an artefact this pipeline did not make (a user's)."""
        return (self.output / self.artefact).exists() and not (self.output / STEP_FILE).exists()


def pretrains_by_default(data: Path | None) -> bool:
    """Pretrain for a given dataset of measured cells; simulated cells gain nothing from it."""
    if data is None:
        return False
    return Dataset.manifest(data).get("provenance", {}).get("made_by") != SIMULATED_BY


def plan_steps(plan: PipelinePlan) -> list[Step]:
    """The commands of one pipeline run, in order."""
    data, models, profile = str(plan.data), plan.models, plan.profile
    lstm, projected, svd = models / "lstm", models / "projected", models / "svd"
    projected_ft, svd_ft, ekf = models / "projected-ft", models / "svd-ft", models / "ekf"
    fusion = models / "fusion"
    sweep = plan.report / "sweep"
    seed = ["--seed", str(plan.seed)]
    steps = []
    if plan.simulate:
        steps.append(Step("simulate", plan.data, ["data", "simulate", "--profile", profile,
                                                  *seed, "--out", data],
                          artefact="manifest.json"))
    steps.append(Step("inspect data", plan.report / "data",
                      ["data", "inspect", data, "--out", str(plan.report / "data")], [plan.data],
                      artefact="summary.json", takes_force=False))
    # fine-tuning inherits the threads from the model's recorded training
    threads = [] if plan.threads is None else ["--threads", str(plan.threads)]
    train = Step("train", lstm, ["train", "--data", data, "--out", str(lstm), "--profile",
                                 profile, *seed, *threads], [plan.data])
    if plan.pretrain:
        cells, budget = PRETRAINING[profile]
        pretrained, pretraining = models / "pretrained", plan.pretraining_data
        steps += [
            Step("simulate (pretraining cells)", pretraining,
                 ["data", "simulate", "--profile", cells, *seed, "--out", str(pretraining)],
                 artefact="manifest.json"),
            Step("pretrain (simulated cells)", pretrained,
                 ["train", "--data", str(pretraining), "--out", str(pretrained), "--profile",
                  profile, *seed, *threads, *budget], [pretraining]),
        ]
        train.argv += ["--init-from", str(pretrained)]
        train.reads.append(pretrained)
    finetune = ["--epochs", str(FINETUNE_EPOCHS[profile]), *FINETUNE_BUDGET[profile], *seed]
    steps += [
        train,
        Step("compress (projection)", projected,
             ["compress", str(lstm), "--data", data, "--out", str(projected),
              "--learnables-reduction", str(plan.reduction)], [plan.data, lstm]),
        Step("fine-tune (projection)", projected_ft,
             ["finetune", str(projected), "--data", data, "--out", str(projected_ft), *finetune],
             [plan.data, projected]),
        Step("compress (SVD, same learnables)", svd,
             ["compress", str(lstm), "--data", data, "--out", str(svd), "--method", "svd",
              "--learnables-reduction", str(plan.reduction)], [plan.data, lstm]),
        Step("fine-tune (SVD)", svd_ft,
             ["finetune", str(svd), "--data", data, "--out", str(svd_ft), *finetune],
             [plan.data, svd]),
        Step("sweep (projection vs SVD)", sweep,
             ["compress", str(lstm), "--data", data, "--sweep", "--out", str(sweep)],
             [plan.data, lstm], artefact="sweep.json"),
        Step("EKF fit", ekf, ["ekf", "fit", data, "--out", str(ekf)], [plan.data]),
        # the compressed network is what a BMS runs; the ECM adds its start from the voltage
        # at rest and the voltage as a second measurement (README, "Fusion estimator")
        Step("fuse (projected, fine-tuned + ECM)", fusion,
             ["fuse", "--lstm", str(projected_ft), "--ekf", str(ekf), "--data", data,
              "--out", str(fusion)], [plan.data, projected_ft, ekf]),
    ]
    # the compressed model made ready for a microcontroller: int8 (its accuracy is the
    # benchmark's to measure), then ONNX and C beside it
    int8, deploy = models / "projected-ft-int8", models / "deploy"
    steps.append(Step("quantize (projection, fine-tuned)", int8,
                      ["quantize", str(projected_ft), "--out", str(int8)], [projected_ft]))
    steps += [Step(f"export ({fmt})", deploy / fmt, ["export", str(int8), "--format", fmt,
                                                     "--out", str(deploy / fmt)], [int8],
                   artefact="export.json") for fmt in ("onnx", "c")]
    benchmark_models = [lstm, projected, projected_ft, int8, svd, svd_ft, ekf, fusion]
    bench_args = ["benchmark", "--data", data, "--out", str(plan.benchmark)]
    for model in benchmark_models:
        bench_args += ["--models", str(model)]
    if profile != "full":
        bench_args.append("--quick")
    steps += [
        Step("benchmark", plan.benchmark, bench_args, [plan.data, *benchmark_models],
             artefact="benchmark.json"),
        Step("report", plan.report, ["report", str(plan.benchmark), "--out", str(plan.report),
                                     "--sweep", str(sweep / "sweep.json"),
                                     "--title", f"bsoc report: {plan.run}"],
             [plan.benchmark, sweep], artefact="report.html"),
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
    invoke: Callable[[list[str]], None],
    log: Callable[[str], None],
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Run the steps through ``invoke(argv)`` (the CLI), skipping those that are up to date."""
    if plan.profile not in PROFILES:
        raise ConfigError(f"unknown profile '{plan.profile}'", remedy=f"use one of {PROFILES}")
    timings: dict[str, float] = {}
    code = source_fingerprint()
    steps = plan_steps(plan)
    if not plan.simulate:  # a given dataset must lie outside every folder the run writes
        for step in steps:
            check_inputs(step.output, [plan.data],
                         remedy="choose another --run, or keep the dataset outside models/ "
                         "and reports/")
    for step in steps:
        if step.overwrites_foreign_output() and not force:
            raise OverwriteRefusedError(
                f"{step.output} exists and was not made by this pipeline",
                remedy="move it away, choose another --run, or pass --force",
            )
        inputs = {"argv": step.argv, "reads": {str(p): _fingerprint(p) for p in step.reads},
                  "bsoc_source": code}
        argv = [*step.argv, "--force"] if step.takes_force else step.argv
        started = time.perf_counter()

        def action(argv: list[str] = argv) -> None:
            log(f"[cyan]$ bsoc {shlex.join(argv)}[/]")
            invoke(argv)

        if run_step(step.name, step.output, inputs, action, log):
            timings[step.name] = round(time.perf_counter() - started, 1)
    return {"report": str(plan.report / "report.html"), "benchmark":
            str(plan.benchmark / "benchmark.json"), "seconds_per_step": timings}
