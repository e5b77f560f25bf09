"""Benchmark contract and report rendering, on the toy dataset with tiny networks."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bsoc.bench.run import run_benchmark
from bsoc.bench.speed import SpeedPlan
from bsoc.data.dataset import Dataset
from bsoc.errors import OverwriteRefusedError
from bsoc.nn.estimator import LstmSocEstimator
from bsoc.nn.network import NetworkConfig, SocNetwork
from bsoc.report.render import write_report

TINY_PLAN = SpeedPlan(repeats=2, latency_steps=20, batch_sizes=(1, 8), batch_samples=64,
                      sequence_samples=100)
CONTRACT_KEYS = {"name", "kind", "learnables", "bytes", "rmse_pct", "mae_pct", "max_abs_err_pct",
                 "by_condition", "scenarios", "step_latency_us", "throughput_samples_per_s"}


@pytest.fixture(scope="module")
def bench_dir(toy_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    dirs = []
    for seed, hidden in ((0, (8, 4)), (1, (4, 2))):
        torch.manual_seed(seed)
        network = SocNetwork(NetworkConfig(hidden_sizes=hidden))
        dirs.append(LstmSocEstimator(network, name=f"net{seed}").save(root / f"net{seed}"))
    out = root / "bench"
    run_benchmark(toy_dataset, dirs, out, plan=TINY_PLAN, command="pytest")
    return out


def test_benchmark_json_follows_the_contract(bench_dir: Path, toy_dataset: Path):
    result = json.loads((bench_dir / "benchmark.json").read_text())
    assert result["dataset"] == "toy" and result["cycles"] == 2
    assert [m["name"] for m in result["models"]] == ["net0", "net1"]
    for model in result["models"]:
        assert CONTRACT_KEYS <= set(model)
        assert set(model["scenarios"]) == {"from_start", "cold_start", "degraded_sensors"}
        assert model["rmse_pct"] == model["scenarios"]["from_start"]["rmse_pct"]
        assert "convergence_s" in model["scenarios"]["cold_start"]
        assert model["bytes"] == 4 * model["learnables"]
        assert {row["cycle"] for row in model["by_condition"]} == {"toy_8", "toy_9"}
    reference = result["models"][0]
    assert result["reference"] == "net0"
    assert reference["ratios_to_reference"]["step_speedup"] == 1.0
    assert result["models"][1]["learnables"] < reference["learnables"]
    assert result["machine"]["logical_cores"] >= 1


def test_benchmark_times_the_peers_beside_bsoc_against_the_gemm_limit(bench_dir: Path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is in the export extra")
    result = json.loads((bench_dir / "benchmark.json").read_text())
    limit = result["gemm_limit"]["macs_per_s"]
    assert limit > 0 and result["peers"]["onnxruntime"]["intra_op_threads"] == 2
    for model in result["models"]:
        assert model["achieved"]["fraction_of_gemm_limit_batched"] == pytest.approx(
            model["macs_per_sample"] * model["throughput_samples_per_s"] / limit)
        assert set(model["peers"]) == {"onnxruntime", "torch_eager"}
        for peer in model["peers"].values():
            assert set(peer["throughput_by_batch"]) == {"8"}  # batch 1 is its step latency
            assert peer["step_latency_us"] > 0 and peer["throughput_samples_per_s"] > 0
            assert peer["bsoc_speedup"]["step"] == pytest.approx(
                peer["step_latency_us"] / model["step_latency_us"])
            assert peer["bsoc_speedup"]["by_batch"]["8"] == pytest.approx(
                model["throughput_samples_per_s"] / peer["throughput_samples_per_s"])
            assert 0 < peer["achieved"]["fraction_of_gemm_limit_batch_1"]
        assert model["eager_step_latency_us"] == model["peers"]["torch_eager"]["step_latency_us"]


def test_headline_rmse_matches_the_saved_traces(bench_dir: Path, toy_dataset: Path):
    result = json.loads((bench_dir / "benchmark.json").read_text())
    traces = np.load(bench_dir / "traces.npz")
    test_cycles = Dataset.load(toy_dataset).split("test")
    for model in result["models"]:
        errors = np.concatenate([
            traces[f"{model['name']}/{c.meta.name}"].astype(np.float64) - c.soc()
            for c in test_cycles
        ])
        assert model["rmse_pct"] == pytest.approx(100 * np.sqrt(np.mean(errors**2)), rel=1e-5)


def test_benchmark_refuses_to_overwrite(bench_dir: Path, toy_dataset: Path):
    models = [bench_dir.parent / "net0"]
    with pytest.raises(OverwriteRefusedError, match="--force"):
        run_benchmark(toy_dataset, models, bench_dir, plan=TINY_PLAN)


def test_report_is_self_contained_with_decodable_figures(bench_dir: Path, tmp_path: Path):
    html_path = write_report([bench_dir], tmp_path / "report")
    text = html_path.read_text()
    assert "<table class=\"summary\">" in text and "net0" in text and "net1" in text
    speed = text[text.index("Speed side by side"):]
    for runtime in ("bsoc", "ONNX Runtime", "eager torch"):
        assert speed.count(f"<td>{runtime}</td>") == 2  # one row per model
    assert "GEMM limit:" in speed and "2 intra-op threads" in speed
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) >= 4
    for encoded in images:
        assert base64.b64decode(encoded)[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (tmp_path / "report" / "report.md").read_text()
    for link in re.findall(r"\]\((figures/[^)]+)\)", markdown):
        assert (tmp_path / "report" / link).stat().st_size > 1000
    with pytest.raises(OverwriteRefusedError):
        write_report([bench_dir], tmp_path / "report")


@pytest.mark.browser
def test_report_renders_in_headless_chromium(bench_dir: Path, tmp_path: Path):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("Debian chromium is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    html_path = write_report([bench_dir], tmp_path / "report")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(html_path.as_uri())
        page.wait_for_load_state("load")
        broken = page.evaluate(
            "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length"
        )
        count = page.evaluate("document.images.length")
        rows = page.locator("table.summary").first.locator("tbody tr").count()
        deployment_rows = page.locator("table.summary").nth(1).locator("tbody tr").count()
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert count >= 4 and broken == 0
    assert rows == 2 and deployment_rows == 2
