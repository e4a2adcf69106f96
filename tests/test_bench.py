"""The benchmark runs end to end (briefly): it measures, the tests never judge timings."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import SCENARIOS


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (Debian: apt-get install wrk)")
def test_benchmark_reports_every_figure_for_a_short_run(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
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
            "seed pod",
            "no annotation",
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
    assert "reviews/s" in run.stdout and "/mutate (seed pod) / /healthz throughput" in run.stdout
    results = json.loads(out.read_text())
    assert [r["name"] for r in results["mutate"]] == ["seed pod", "no annotation"]
    for result in [results["healthz"], *results["mutate"]]:
        assert result["requests"] > 0 and result["failures"] == 0
        assert result["peak_rss_mib"] > 0 and result["server_cpu_s_per_1000"] > 0
    assert len(results["startup_s"]) == 1


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
