"""The GPU check (`python -m helpers.gpu_check`) on a machine without a GPU: the stand-in part runs, the rest is
listed as skipped with its reason, and the reports are written."""

import json

from helpers.gpu_check import CHECKS, main


def test_runs_the_stand_in_checks_and_reports_the_rest_as_skipped(tmp_path, capsys):
    # far above the check's 40 s: a test process beside a busy one must not be stopped by the budget part-way
    assert main(["--budget-s", "900", "--out", str(tmp_path), "--only", "stand-in-loading", "medium"]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["environment"]["cuda"] is False and report["environment"]["versions"]["diffusers"]
    checks = {check["check"]: check for check in report["checks"]}
    assert set(checks) == {"stand-in-loading", "medium"}
    assert checks["medium"]["status"] == "skipped: needs a CUDA GPU"
    loading = checks["stand-in-loading"]
    assert loading["status"] == "ok", loading
    # 5 offload choices x 2 quantize x 4 T5 choices; without a GPU every offload is refused before loading
    assert len(loading["cases"]) == 40
    ran = [case for case in loading["cases"] if case["status"] == "ok"]
    refused = [case for case in loading["cases"] if case["status"] == "refused"]
    assert len(ran) == 16 and len(refused) == 24
    assert all("needs a CUDA GPU" in case["error"] or "does not work with bitsandbytes" in case["error"]
               for case in refused)
    assert all(case["image-to-image"] == case["inpainting"] == "ran, components shared" for case in ran)
    assert all(case["median_s"] > 0 and case["host_peak_gb"] > 0 for case in ran)
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "| stand-in-loading | ok | 16 / 24 / 0 |" in markdown and "no CUDA GPU" in markdown
    assert "saved" in capsys.readouterr().out


def test_a_check_that_does_not_fit_the_budget_is_skipped(tmp_path):
    assert main(["--budget-s", "1", "--out", str(tmp_path), "--only", "bench-options"]) == 0
    (check,) = json.loads((tmp_path / "gpu_check.json").read_text())["checks"]
    assert check["status"].startswith("skipped: 1 s of the budget left, it needs 15 s")


def test_every_check_has_a_runner():
    from helpers.gpu_check import RUNNERS

    assert [check.name for check in CHECKS] == list(RUNNERS)


def test_every_bench_option_combination_runs_or_is_refused_up_front(tmp_path):
    from helpers.gpu_check import Recorder, check_bench_options

    records = tmp_path / "records.jsonl"
    check_bench_options(Recorder(records))
    cases = [json.loads(line) for line in records.read_text().splitlines()]
    assert len(cases) == 32
    assert [case for case in cases if case["status"] == "failed"] == []
    refused = [case for case in cases if case["status"] == "refused"]
    assert all(case["error"].startswith("python -m helpers.bench: error: ") for case in refused)
    assert any("--fuse-qkv cannot be used here: this route stores the transformer in NF4" in case["error"] for case in refused)


def test_the_speed_ladder_check_measures_each_rung_or_says_why_not(tmp_path):
    """The ladder's own code, on the stand-in at 64 px: FP8 refused without a GPU, and after it the rungs of the
    uncompiled model (the compiled rungs are checked in tests/test_speed.py; here they would only compile again)."""
    from helpers.gpu_check import LADDER, Recorder, check_speed_ladder

    records = tmp_path / "records.jsonl"
    rungs = (LADDER[0], LADDER[3], *LADDER[4:])
    check_speed_ladder(Recorder(records), "tiny", size=64, steps=12, rungs=rungs, runs=1)
    cases = {case["case"]: case for case in map(json.loads, records.read_text().splitlines())}
    assert cases["ladder planned"]["rungs"] == list(rungs)
    assert cases["cudnn attention"]["status"] == "refused" and "on a CPU" in cases["cudnn attention"]["error"]
    assert cases[LADDER[3]]["status"] == "refused" and "fp8=True on a CPU" in cases[LADDER[3]]["error"]
    plain, flash, cached = (cases[name] for name in (LADDER[0], "flash attention", LADDER[-1]))
    assert plain["status"] == flash["status"] == cached["status"] == "ok"
    assert plain["attention_kernel"] == flash["attention_kernel"] == "flash (CPU)"
    assert plain["pixel_difference"] == 0 and flash["pixel_difference"] < 0.1  # the same attention
    assert cached["pixel_difference"] > flash["pixel_difference"]  # reuse changes the picture
    assert all(case["graphs_compiled"] == 0 and case["median_s"] > 0 for case in (plain, flash, cached))
