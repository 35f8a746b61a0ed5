"""The GPU check (`python -m helpers.gpu_check`) on a machine without a GPU: the stand-in part runs, the rest is
listed as skipped with its reason, and the reports are written."""

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.gpu_check import CHECKS, LEASE, LEASE_BUDGET_S, LEASE_IF_TIME, main


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
    assert check["status"] == f"skipped: 1 s of the budget left, its estimate is {CHECKS['bench-options'].estimate_s:.0f} s"


def test_every_check_has_a_runner():
    from helpers.gpu_check import RUNNERS

    assert set(CHECKS) == set(RUNNERS)


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
    assert rungs[-1] == "cudnn attention"  # last: on older cuDNN it can end the process
    check_speed_ladder(Recorder(records), "tiny", size=64, steps=12, rungs=rungs, runs=1)
    cases = {case["case"]: case for case in map(json.loads, records.read_text().splitlines())}
    assert cases["ladder planned"]["rungs"] == list(rungs)
    assert cases["cudnn attention"]["status"] == "refused" and "on a CPU" in cases["cudnn attention"]["error"]
    assert cases[LADDER[3]]["status"] == "refused" and "fp8=True on a CPU" in cases[LADDER[3]]["error"]
    plain, flash, cached = (cases[name] for name in (LADDER[0], "flash attention", LADDER[-2]))
    assert plain["status"] == flash["status"] == cached["status"] == "ok"
    assert plain["attention_kernel"] == flash["attention_kernel"] == "flash (CPU)"
    assert plain["pixel_difference"] == 0 and flash["pixel_difference"] < 0.1  # the same attention
    assert cached["pixel_difference"] > flash["pixel_difference"]  # reuse changes the picture
    assert all(case["graphs_compiled"] == 0 and case["median_s"] > 0 for case in (plain, flash, cached))


def test_the_lease_plan_fits_its_budget_and_lists_each_check_with_its_estimate(capsys):
    """What `--lease --dry-run` prints on any machine: the checks in order of value, each with its estimate part by
    part, the planned sum within the 8 minutes a 15-minute lease leaves, and the checks run only if time is left."""
    assert main(["--lease", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = [line.split(":")[0] for line in lines if not line.startswith((" ", "planned"))]
    assert listed == [*LEASE, *LEASE_IF_TIME]
    planned = sum(CHECKS[name].estimate_s for name in LEASE)
    assert planned <= LEASE_BUDGET_S == 480
    assert lines[-1] == f"planned: {planned:.0f} s of the 480 s budget"
    assert all("(only if time is left)" in line for line in lines if line.split(":")[0] in LEASE_IF_TIME)
    assert any("(estimate)" in line for line in lines) and any("build Large" in line for line in lines)


def test_lease_and_only_are_not_combined(capsys):
    with pytest.raises(SystemExit):
        main(["--lease", "--only", "medium", "--dry-run"])
    assert "--only with --lease" in capsys.readouterr().err


def test_turbo_is_measured_on_the_fastest_rung_that_ran_when_fp8_is_refused(tmp_path):
    """The FP8 rung is refused on a CPU, as on a GPU without FP8 tensor cores; Turbo's settings are still measured,
    on the fastest rung that ran (here the only one)."""
    from helpers.gpu_check import LADDER, Recorder, check_speed_ladder

    records = tmp_path / "records.jsonl"
    check_speed_ladder(Recorder(records), "tiny", size=64, steps=4, rungs=(LADDER[0], LADDER[3]), runs=1,
                       turbo="large-turbo")
    cases = [json.loads(line) for line in records.read_text().splitlines()]
    assert [case["status"] for case in cases] == ["ok", "ok", "refused", "ok"]
    turbo = cases[-1]
    assert turbo["case"] == "SD3.5 Large Turbo's settings at no speed-ups" and turbo["model"] == "large-turbo"
    assert turbo["steps"] == 4 and turbo["median_s"] > 0 and "built_again" not in turbo


def test_every_route_and_estimate_gpu_check_names_can_be_planned():
    """Every call in helpers/gpu_check.py that plans a route or an estimate from written-out values, made here on
    the CPU (routes planned as for an H100), so that a renamed option cannot hide in a check that runs only on a
    GPU. Calls from variables are allowed only in the few functions whose callers are checked here too."""
    from helpers import gpu_check, memory
    from helpers.memory import Strategy, estimate, estimate_on
    from helpers.routes import plan_route

    def planned(model, **options):
        return plan_route(model, **{"offload": None, "quantize": None, "t5": "keep", "dtype": "bfloat16", **options,
                                    "machine": "h100"})

    makers = {
        "_full_size": planned, "_estimate": gpu_check._estimate, "Strategy": Strategy, "estimate": estimate,
        "estimate_on": estimate_on, "plan_route": lambda model, **options: plan_route(model, **options,
                                                                                     machine="h100"),
        "_offload_check": lambda model, offload, strategy, nf4=False, steps=None: (
            planned(model, offload=offload, quantize="nf4" if nf4 else None), gpu_check._estimate(model, strategy)),
    }
    generic = {"_full_size", "_estimate", "check_speed_ladder", "catalogue_cases", "check_catalogue_routes",
               "check_stand_in_loading",
               "_offload_check", "check", "check_fp16", "check_lora_training"}
    tree = ast.parse(Path(gpu_check.__file__).read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    made, unchecked = 0, []
    for call in ast.walk(tree):
        name = getattr(getattr(call, "func", None), "id", None)
        if not isinstance(call, ast.Call) or name not in makers:
            continue
        def value(node):  # a literal, or a constant of gpu_check or helpers.memory (STEPS, LOW_MEMORY_LARGE)
            if isinstance(node, ast.Name) and node.id.isupper():
                return getattr(gpu_check, node.id, None) or getattr(memory, node.id)
            return ast.literal_eval(node)

        try:
            args = [value(arg) for arg in call.args]
            kwargs = {keyword.arg: value(keyword.value) for keyword in call.keywords}
        except ValueError:
            inside = parents.get(call)
            while inside is not None and not isinstance(inside, ast.FunctionDef):
                inside = parents.get(inside)
            if getattr(inside, "name", None) not in generic:
                unchecked.append(f"line {call.lineno}: {ast.unparse(call)}")
            continue
        makers[name](*args, **kwargs)
        made += 1
    assert unchecked == [], f"plan these from written-out values, or check their callers here: {unchecked}"
    assert made >= 15  # the walk found them (19 on 2026-12-08)
    # the generic ones, as their callers use them
    assert gpu_check.catalogue_cases(80)
    for model in ("large", "medium"):
        for dtype in ("bfloat16", "float16"):
            planned(model, dtype=dtype), gpu_check._estimate(model, "gpu", dtype=dtype)


def test_catalogue_routes_are_measured_once_per_distinct_route():
    """Machines with the same GPU memory, compute capability and route (the A10G machines of SageMaker) are one case,
    naming each; every machine that fits the GPU and loads without offload is in exactly one case per model."""
    from helpers.gpu_check import catalogue_cases
    from helpers.machines import MACHINES

    cases = catalogue_cases(80)
    keys = [(case["machine"].gpu_gb, case["machine"].compute_capability, case["model"], case["route"].describe())
            for case in cases]
    assert len(keys) == len(set(keys)) and all(not case["route"].offload for case in cases)
    for model in ("large", "medium"):
        named = [name for case in cases if case["model"] == model for name in case["machines"]]
        assert len(named) == len(set(named))
    a10g = [case for case in cases if "sagemaker-g5-xlarge" in case["machines"] and case["model"] == "medium"]
    assert len(a10g) == 1 and {"sagemaker-g5-2xlarge", "sagemaker-g5-12xlarge"} <= set(a10g[0]["machines"])
    assert len(cases) < 2 * len(MACHINES)


def test_the_environment_names_every_library_a_gpu_figure_depends_on():
    from helpers.gpu_check import environment

    found = environment()
    assert {"torch", "diffusers", "transformers", "bitsandbytes", "torchao", "peft"} <= set(found["versions"])
    assert found["versions"]["peft"] and "cudnn" in found


def test_a_killed_run_keeps_every_finished_case_and_stops_its_check(tmp_path):
    """The report is written after every case: kill the command while a check runs, and the report holds what it
    had measured, marked as running; the check's own process ends with it."""
    command = [sys.executable, "-m", "helpers.gpu_check", "--only", "stand-in-loading", "--budget-s", "900",
               "--out", str(tmp_path)]
    parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report = tmp_path / "gpu_check.json"
    records = tmp_path / ".stand-in-loading.jsonl"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                check = json.loads(report.read_text())["checks"][-1]
            except (OSError, ValueError, IndexError):
                continue
            if len(check["cases"]) >= 3:
                break
        else:
            pytest.fail("no case was reported within 300 s")
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    kept = json.loads(report.read_text())["checks"][-1]
    assert kept["check"] == "stand-in-loading" and kept["status"] == "running" and len(kept["cases"]) >= 3
    assert all("offload" in case for case in kept["cases"])
    time.sleep(3)  # the check's process ends with its parent: its records stop growing
    grown = records.stat().st_size if records.exists() else 0
    time.sleep(3)
    assert (records.stat().st_size if records.exists() else 0) == grown
    assert os.path.exists(tmp_path / "gpu_check.md")


def test_the_low_memory_check_runs_each_case_on_the_stand_in(tmp_path):
    """The low-memory check's own code on the stand-in (64 px, 2 steps): NF4 transformer and T5, then the tiled
    decode, then the text encoders freed after encoding and the pictures made from the embeddings; each case's
    estimate is the full-size Large one it will be compared with on a GPU."""
    from helpers.gpu_check import Recorder, check_low_memory
    from helpers.memory import LOW_MEMORY_LARGE

    records = tmp_path / "records.jsonl"
    check_low_memory(Recorder(records), stand_in=True)
    cases = [json.loads(line) for line in records.read_text().splitlines()]
    assert [case["status"] for case in cases] == ["ok"] * 4, [case.get("error") for case in cases]
    freed = cases[-1]
    assert freed["strategy"] == freed["estimate_strategy"] == LOW_MEMORY_LARGE and freed["estimate_gb"] <= 11
    assert freed["median_s"] > 0 and freed["encoding_peak_gb"] is None  # no GPU here: no memory figures
    assert [case["estimate_strategy"] for case in cases[1:3]] == ["nf4-t5-nf4"] * 2
    assert cases[2]["estimate_gb"] < cases[1]["estimate_gb"]  # the tiled decode
