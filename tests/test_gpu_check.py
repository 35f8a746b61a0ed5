"""The GPU check (`python -m helpers.gpu_check`) on a machine without a GPU: the stand-in part runs, the rest is
listed as skipped with its reason, and the reports are written."""

import json

from helpers.gpu_check import CHECKS, main


def test_runs_the_stand_in_checks_and_reports_the_rest_as_skipped(tmp_path, capsys):
    assert main(["--budget-s", "120", "--out", str(tmp_path), "--only", "stand-in-loading", "medium"]) == 0
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
