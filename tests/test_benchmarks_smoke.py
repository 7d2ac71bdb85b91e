"""Smoke test of the benchmark suite: a tiny configuration end to end (a few seconds).

Runs the real runner (``benchmarks.__main__.run_suite``) on the teacher-student
problem with one seed and a handful of steps, plus each speed measurement
with a single repeat, and checks what the suite promises: a Markdown report,
PNG plots, a results table with one row per requested method, finalized
models on exact levels, and the targets table.
"""
import json
import os

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from benchmarks import report as R  # noqa: E402
from benchmarks import speed as S  # noqa: E402
from benchmarks.__main__ import parse_args, run_suite  # noqa: E402

METHODS = ["fp", "ste-bc", "bc", "md-tanh-s", "pq"]


def test_suite_runs_and_writes_report(tmp_path):
    argv = ["--problems", "teacher", "--methods", ",".join(METHODS), "--seeds", "0", "--steps", "30",
            "--no-speed", "--workers", "1", "--out", str(tmp_path)]
    results = run_suite(parse_args(argv), argv)

    report = (tmp_path / "report.md").read_text()
    assert (tmp_path / "curves_teacher.png").stat().st_size > 1000
    assert json.loads((tmp_path / "results.json").read_text())["config"]["problems"] == ["teacher"]

    runs = results["runs"]
    assert sorted(r["method"] for r in runs) == sorted(METHODS)
    assert all(r["error"] is None for r in runs), [r["error"] for r in runs]
    assert all(r["exact"] for r in runs if r["method"] != "fp")
    assert all(len(r["curve_step"]) == len(r["curve_metric"]) > 0 for r in runs)

    header, rows = R.results_table(R.aggregate(runs), ["teacher"], METHODS)
    assert header == ["method", "teacher"]
    assert [r[0] for r in rows] == METHODS
    for row in rows:
        assert row[1] in report
    assert "| fp |" in report and "## Accuracy of the finalized models" in report

    table = R.console_table(results)
    assert all(m in table for m in METHODS)


def test_speed_measurements_and_report(tmp_path):
    step = S.step_times("1M", ["bc"], repeats=1, warmup=0)
    assert step["bc"]["ms"] > 0 and step["bc"]["base_ms"] > 0
    assert step["bc"]["state_bytes"] > step["bc"]["base_state_bytes"]  # latents on top of Adam's moments
    it = S.iteration_times(["bc"], batch=4, repeats=1, warmup=0)
    assert set(it) == {"fp", "ste-bc", "bc"} and it["fp"]["vs_fp"] == 1.0
    ev = S.eval_times(batch=4, repeats=1, warmup=0)
    assert set(ev) == {"fp", "ste-bc", "proxopt"}
    disk = S.disk_sizes()
    assert disk["finalized"] == pytest.approx(disk["fp"], rel=0.05)

    results = {"config": {"command": "test", "machine": "test", "problems": [], "seeds": [0], "methods_all": [],
                          "workers": 1, "threads": 1, "notes": []},
               "runs": [], "speed": {"step": {"1M": step}, "iteration": it, "eval": ev, "disk": disk},
               "wall_s": 0.0}
    R.write_report(results, str(tmp_path))
    report = (tmp_path / "report.md").read_text()
    assert (tmp_path / "speed_step.png").exists()
    assert "| bc | 1 | <= 1.3x |" in report
    names = [t[0] for t in R.targets(results)]
    assert "step bc" in names and "train iteration bc" in names and "eval forward vs ste-bc" in names


def test_compare_before_after():
    """``python -m benchmarks.compare`` measures both sides in subprocesses and tabulates them."""
    from benchmarks import compare

    root = compare.HERE
    before = [compare.measure(root, ["bc"], ["1M"], 1)]
    assert set(before[0]) == {"1M"} and before[0]["1M"]["bc"] > 0
    text = compare.table(before, before)
    assert text.splitlines()[0] == "| preset | 1M before | 1M after |"
    assert text.splitlines()[2].startswith("| bc | ")
    with pytest.raises(ValueError, match="Invalid checkout"):
        compare.measure(os.path.join(root, "docs"), ["bc"], ["1M"], 1)


def test_cuda_check_agreement_and_no_device_exit(capsys):
    """``python -m benchmarks.cuda_check``: the agreement check runs on any device (CPU against CPU here:
    identical), and without CUDA the command says so and exits 0 (CI has no GPU)."""
    from benchmarks import cuda_check

    res = cuda_check.device_agreement("cpu", ["bc", "bnn++", "md-softmax-s"], steps=2)
    assert set(res) == {"bc", "bnn++", "md-softmax-s"}
    assert all(r["max_abs_diff"] == 0.0 and r["fused"][0] is True for r in res.values())
    if not __import__("torch").cuda.is_available():
        assert cuda_check.main([]) == 0
        assert "no CUDA device" in capsys.readouterr().out
