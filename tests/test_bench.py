"""The benchmark runs end to end (briefly), against the Go peer when agnhost is there: it measures and
reports ratios; the tests never judge timings."""

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.run import GET_AGNHOST, SCENARIOS, find_agnhost

SHORT_RUN = ["seed pod", "no annotation"]


@dataclass
class Run:
    stdout: str
    results: dict[str, Any]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (Debian: apt-get install wrk)")
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--seconds",
            "1",
            "--startups",
            "1",
            "--scenarios",
            *SHORT_RUN,
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).parent.parent,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return Run(run.stdout, json.loads(out.read_text()))


def test_benchmark_reports_every_figure_for_a_short_run(short_run: Run) -> None:
    assert "reviews/s" in short_run.stdout and "target peak RSS <= 80 MiB" in short_run.stdout
    results = short_run.results
    assert [r["name"] for r in results["mutate"]] == SHORT_RUN
    for result in [results["healthz"], *results["mutate"]]:
        assert result["requests"] > 0 and result["failures"] == 0
        assert result["peak_rss_mib"] > 0 and result["server_cpu_s_per_1000"] > 0
    assert len(results["startup_s"]) == 1


def test_benchmark_measures_the_go_peer_in_the_same_run_and_reports_ratios(short_run: Run) -> None:
    if find_agnhost() is None:
        pytest.skip(GET_AGNHOST)
    go, ratios = short_run.results["go"], short_run.results["ratios"]
    assert [r["name"] for r in go] == SHORT_RUN
    for result in go:
        assert result["requests"] > 0 and result["failures"] == 0, "the Go peer answered every review"
        assert result["peak_rss_mib"] > 0 and result["server_cpu_s_per_1000"] > 0
    ours = {r["name"]: r for r in short_run.results["mutate"]}
    theirs = {r["name"]: r for r in go}
    assert [r["name"] for r in ratios] == SHORT_RUN
    for ratio in ratios:
        name = ratio["name"]
        throughput = (ours[name]["requests"] / ours[name]["seconds"]) / (
            theirs[name]["requests"] / theirs[name]["seconds"]
        )
        assert ratio["throughput"] == pytest.approx(throughput)
        assert ratio["p99"] == pytest.approx(ours[name]["p99_ms"] / theirs[name]["p99_ms"])
        cpu = ours[name]["server_cpu_s_per_1000"] / theirs[name]["server_cpu_s_per_1000"]
        assert ratio["cpu_per_review"] == pytest.approx(cpu)
    assert "ours / Go" in short_run.stdout
    assert "target seed pod: throughput >= 1.3x Go's:" in short_run.stdout


def test_benchmark_pods_have_the_shapes_the_issue_names() -> None:
    seed = SCENARIOS["seed pod"]()
    assert (
        seed["request"]["object"]["metadata"]["annotations"]["sidecar.example/log-path"] == "/var/log/app.log"
    )
    assert "sidecar.example/log-path" not in SCENARIOS["no annotation"]()["request"]["object"][
        "metadata"
    ].get("annotations", {})
    assert len(SCENARIOS["100 containers"]()["request"]["object"]["spec"]["containers"]) == 100
    big = SCENARIOS["1 MiB pod"]()
    env = big["request"]["object"]["spec"]["containers"][0]["env"]
    assert len(env) == 1500 and {len(v["value"]) for v in env} == {600}
    assert 0.9 * 2**20 < len(json.dumps(big)) < 1.1 * 2**20
