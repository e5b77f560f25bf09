"""The one-command pipeline, end to end on the toy dataset (tiny profile)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import click
import pytest
import typer

from bsoc.cli import app, main
from bsoc.command_lines import CommandLines
from bsoc.data.dataset import Dataset
from bsoc.data.simulate import SIMULATED_BY
from bsoc.pipeline import PipelinePlan, plan_steps, pretrains_by_default
from bsoc.pipeline_steps import STEP_FILE
from bsoc.profiles import PROFILES

BSOC = typer.main.get_command(app)
LINES = CommandLines(BSOC)


def run_cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as done:
        main(args)
    return int(done.value.code)


@pytest.fixture(scope="module")
def pipeline_run(toy_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        assert run_cli(["pipeline", "--profile", "tiny", "--data", str(toy_dataset),
                        "--run", "toy"]) == 0
    return root


def test_pipeline_produces_report_and_all_models(pipeline_run: Path):
    bench = json.loads((pipeline_run / "reports/toy/benchmark/benchmark.json").read_text())
    kinds = {m["name"]: m["kind"] for m in bench["models"]}
    assert kinds == {"lstm": "lstm", "projected": "projected-lstm",
                     "projected-ft": "projected-lstm", "projected-ft-int8": "projected-lstm-int8",
                     "svd": "svd-lstm", "svd-ft": "svd-lstm", "ekf": "ekf",
                     "fusion": "fusion"}
    by_name = {m["name"]: m for m in bench["models"]}
    assert by_name["projected-ft-int8"]["bytes"] < by_name["projected-ft"]["bytes"]
    assert {name for name, m in by_name.items() if "deployment" in m} == set(kinds) - {"ekf", "fusion"}
    assert by_name["projected"]["learnables"] <= 0.5 * by_name["lstm"]["learnables"]
    assert by_name["svd"]["learnables"] <= by_name["projected"]["learnables"]
    assert by_name["fusion"]["calibration"]["within_2_sigma"] is not None
    fused = json.loads((pipeline_run / "models/toy/fusion/config.json").read_text())
    assert fused["lstm"]["kind"] == "projected-lstm" and fused["ecm"] is not None
    assert (pipeline_run / "reports/toy/report.html").stat().st_size > 10_000
    assert json.loads((pipeline_run / "reports/toy/sweep/sweep.json").read_text())["projection"]
    summary = json.loads((pipeline_run / "reports/toy/data/summary.json").read_text())
    assert len(summary["cycles"]) == len(summary["figures"]) > 0


def test_the_fine_tuned_projection_is_quantised_and_exported(pipeline_run: Path):
    int8 = json.loads((pipeline_run / "models/toy/projected-ft-int8/config.json").read_text())
    assert int8["kind"] == "projected-lstm-int8"
    assert int8["quantization"]["source_model"]["path"] == "models/toy/projected-ft"
    for fmt, files in (("onnx", ["bsoc_step.onnx", "bsoc_sequence.onnx"]),
                       ("c", ["bsoc_model.h", "bsoc_model.c", "run_cycle.c", "README.md"])):
        export = json.loads((pipeline_run / f"models/toy/deploy/{fmt}/export.json").read_text())
        assert export["model"] == "models/toy/projected-ft-int8" and export["weights"] == "int8"
        assert export["files"] == files
    assert "Deployment: the exported C library" in (
        pipeline_run / "reports/toy/report.md").read_text()


def test_a_given_dataset_is_trained_on_after_pretraining_on_simulated_cells(pipeline_run: Path):
    pretraining = json.loads((pipeline_run / "data/toy-pretraining/manifest.json").read_text())
    assert pretraining["provenance"]["made_by"] == "bsoc data simulate"
    pretrained = json.loads((pipeline_run / "models/toy/pretrained/config.json").read_text())
    assert pretrained["data"]["fingerprint"] == pretraining["fingerprint"]
    lstm = json.loads((pipeline_run / "models/toy/lstm/config.json").read_text())
    assert lstm["initialised_from"]["path"] == "models/toy/pretrained"
    assert lstm["data"]["name"] == "toy"


def test_only_measured_cells_are_pretrained_for_by_default(toy_dataset: Path, tmp_path: Path):
    assert pretrains_by_default(toy_dataset)
    assert not pretrains_by_default(None)
    simulated = Dataset.load(toy_dataset)
    simulated.provenance = {"made_by": SIMULATED_BY}
    assert not pretrains_by_default(simulated.save(tmp_path / "sim"))


@pytest.mark.parametrize(("simulate", "pretrain"), [(True, False), (False, False), (False, True)])
def test_pretraining_steps_only_when_asked(tmp_path: Path, simulate: bool, pretrain: bool):
    plan = PipelinePlan(profile="tiny", run="r", data=tmp_path / "d", simulate=simulate,
                        pretrain=pretrain)
    steps = {step.name: step for step in plan_steps(plan, LINES)}
    assert ("pretrain (simulated cells)" in steps) is pretrain
    assert ("--init-from" in steps["train"].argv) is pretrain
    if pretrain:
        assert steps["pretrain (simulated cells)"].output in steps["train"].reads


@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize(("simulate", "pretrain"), [(True, False), (False, True)])
def test_every_planned_step_is_a_command_line_bsoc_parses(tmp_path: Path, profile: str,
                                                          simulate: bool, pretrain: bool):
    plan = PipelinePlan(profile=profile, run="r", data=tmp_path / "d", simulate=simulate,
                        pretrain=pretrain, threads=1)
    for step in plan_steps(plan, LINES):
        words = step.argv[:2] if step.argv[0] in ("data", "ekf") else step.argv[:1]
        command = LINES.command(" ".join(words))
        parsed = command.make_context("bsoc", [*step.argv[len(words):], *step.force])
        if step.force:
            assert parsed.params["force"] is True
        assert parsed.params.get("out") in (step.output, None) or step.name == "report"


def test_options_are_spelled_from_the_commands_so_a_renamed_one_fails_when_planned(
    tmp_path: Path,
):
    plan = PipelinePlan(profile="tiny", run="r", data=tmp_path / "d", simulate=False, threads=1)
    train = BSOC.commands["train"]

    def with_threads_option(*declaration: str) -> CommandLines:
        changed = click.Command("train", params=[
            *(p for p in train.params if p.name != "threads"), click.Option(list(declaration))])
        return CommandLines(click.Group("bsoc", commands={**BSOC.commands, "train": changed}))

    renamed_flag = plan_steps(plan, with_threads_option("--torch-threads", "threads"))
    assert next(s for s in renamed_flag if s.name == "train").argv[-2:] == ["--torch-threads", "1"]
    with pytest.raises(LookupError, match="threads"):
        plan_steps(plan, with_threads_option("--torch-threads"))
    with pytest.raises(LookupError, match="no command"):
        LINES("trian", data=tmp_path)


def test_threads_reach_both_trainings(tmp_path: Path):
    plan = PipelinePlan(profile="tiny", run="r", data=tmp_path / "d", simulate=False,
                        pretrain=True, threads=1)
    trainings = [step.argv for step in plan_steps(plan, LINES) if step.argv[0] == "train"]
    assert len(trainings) == 2
    assert all(argv[argv.index("--threads") + 1] == "1" for argv in trainings)


def test_second_run_skips_every_step(pipeline_run: Path, toy_dataset: Path, capsys):
    stamps = {p: p.stat().st_mtime_ns for p in (pipeline_run / "models/toy").rglob("config.json")}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(pipeline_run)
        assert run_cli(["pipeline", "--profile", "tiny", "--data", str(toy_dataset),
                        "--run", "toy", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["seconds_per_step"] == {}
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_pipeline_refuses_to_overwrite_a_users_model(tmp_path: Path, toy_dataset: Path):
    plan = PipelinePlan(profile="tiny", run="mine", data=toy_dataset, simulate=False,
                        root=tmp_path)
    first_model = next(step.output for step in plan_steps(plan, LINES) if step.name == "train")
    first_model.mkdir(parents=True)
    (first_model / "config.json").write_text("{}")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        assert run_cli(["pipeline", "--profile", "tiny", "--data", str(toy_dataset),
                        "--run", "mine"]) == 2
    assert (first_model / "config.json").read_text() == "{}"
    assert not (first_model / STEP_FILE).exists()
    assert not plan.pretraining_data.exists()  # refused before any step ran


def test_failed_step_leaves_its_output_claimed_not_done(tmp_path: Path):
    from bsoc.pipeline import Step
    from bsoc.pipeline_steps import is_up_to_date, run_step

    step = Step("train", tmp_path / "model", ["train"])
    inputs = {"argv": step.argv}

    def crash() -> None:
        (step.output / "config.json").write_text("{}")
        raise RuntimeError("solver blew up")

    with pytest.raises(RuntimeError):
        run_step(step.name, step.output, inputs, crash, log=lambda _: None)
    assert not is_up_to_date(step.output, inputs)
    assert not step.overwrites_foreign_output()  # the next run may redo it
    assert run_step(step.name, step.output, inputs, lambda: None, log=lambda _: None)
    assert is_up_to_date(step.output, inputs)


def test_force_rerun_replaces_only_the_report_files(pipeline_run: Path, toy_dataset: Path,
                                                    capsys: pytest.CaptureFixture[str]):
    """A report the pipeline does not know as its own, replaced with --force: the run's
    benchmark, sweep and data summary in the same folder and a user's notes stay; a write
    that fails half-way leaves the old report as it was."""
    report = pipeline_run / "reports/toy"
    (report / STEP_FILE).unlink()
    (report / "notes.md").write_text("mine")
    before = {p: p.read_bytes() for p in report.rglob("*") if p.is_file()}
    argv = ["pipeline", "--profile", "tiny", "--data", str(toy_dataset), "--run", "toy", "--force"]
    real_write = Path.write_text

    def disk_full_at_the_html(self: Path, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if self.name == "report.html" and ".bsoc-" in self.parent.name:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(pipeline_run)
        patch.setattr(Path, "write_text", disk_full_at_the_html)
        assert run_cli(argv) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert all(path.read_bytes() == data for path, data in before.items())
    html = (report / "report.html").stat().st_ino
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(pipeline_run)
        assert run_cli(argv) == 0
    assert (report / "report.html").stat().st_ino != html
    own = {report / "report.html", report / "report.md", *report.glob("figures/*")}
    assert all(path.read_bytes() == data for path, data in before.items() if path not in own)
