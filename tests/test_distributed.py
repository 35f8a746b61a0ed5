"""Notebook 10: a sweep spread over processes makes every image once, survives a killed process, and gives the
pictures one process gives. The launches are real `accelerate launch` runs of two CPU processes (gloo)."""

import collections
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import load_pipeline, run_sweep
from helpers.distributed import (
    CLAIMS,
    RunningSweep,
    check_processes,
    claim,
    launch,
    make_plan,
    per_gpu_rows,
    read_plan,
    release,
)
from helpers.images import STAGING_PREFIX
from helpers.models import get_model

TOY = get_model("toy")
FIXED = {name: value for name, value in TOY.recommended().items() if name != "guidance_scale"}
VARY = {"prompt": ["a red circle on a blue background", "a white square"], "guidance_scale": [1.0, 3.0],
        "seed": [0, 1, 2]}


def finished(folder) -> list:
    """The sweep's pictures: a process killed while saving leaves its hidden staging file (.saving-*), never read."""
    return sorted(path for path in folder.glob("*.png") if not path.name.startswith(STAGING_PREFIX))


def pictures(folder) -> dict[str, np.ndarray]:
    return {path.name: np.asarray(Image.open(path)) for path in finished(folder)}


def test_a_killed_process_loses_nothing_and_a_relaunch_makes_every_image_exactly_once(tmp_path):
    plan = make_plan(TOY.name, FIXED, VARY, tmp_path / "sweep")
    running = RunningSweep(plan, 2)
    running.crash_one_process(after_images=2)
    crashed = running.wait(progress=False)
    assert crashed.returncode != 0 and 2 <= crashed.made < 12
    assert len(finished(plan.folder)) == crashed.made  # what was finished stays, complete
    missing = crashed.missing()  # counted against the plan, each named by its settings
    assert len(missing) == 12 - crashed.made and all(picture["file"] and "seed" in picture for picture in missing)
    assert not {picture["file"] for picture in missing} & set(pictures(plan.folder))
    relaunched = launch(plan, 2, progress=False)
    assert relaunched.returncode == 0 and relaunched.missing() == []

    made = collections.Counter(crashed.files() + relaunched.files())
    assert set(made.values()) == {1}, "no image was made twice"
    assert set(made) == set(pictures(plan.folder)) and len(made) == 12, "every image of the plan, once"
    assert not list((plan.folder / CLAIMS).glob("*.claim")), "no claim left open"

    # One process, in this process, with one thread as each launched process had: the same pictures, pixel for
    # pixel. (On a CPU the thread count changes float rounding; on GPUs each process has its own GPU.)
    pipe = load_pipeline(TOY)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = run_sweep(pipe, TOY.name, FIXED, VARY, folder=tmp_path / "one-process", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert alone.generated == 12
    expected, got = pictures(tmp_path / "one-process"), pictures(plan.folder)
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)

    # The finished sweep reads like any other: run_sweep finds every image and makes none.
    read = run_sweep(pipe, TOY.name, FIXED, VARY, folder=plan.folder, progress=False)
    assert (read.generated, read.reused) == (0, 12)


def test_two_launches_on_one_folder_make_each_image_once(tmp_path):
    plan = make_plan(TOY.name, FIXED, VARY, tmp_path / "sweep")
    # One thread each: two launches at once on two cores would otherwise each start two threads and crawl.
    first, second = RunningSweep(plan, 1, threads_per_process=1), RunningSweep(plan, 1, threads_per_process=1)
    results = [first.wait(progress=False), second.wait(progress=False)]
    assert [result.returncode for result in results] == [0, 0]
    made = collections.Counter(results[0].files() + results[1].files())
    assert set(made.values()) == {1} and len(made) == 12
    assert set(made) == set(pictures(plan.folder))


def test_a_plan_is_checked_before_any_process_starts(tmp_path):
    with pytest.raises(ValueError, match="'guidance_scale' is both fixed and varied"):
        make_plan(TOY.name, TOY.recommended(), VARY, tmp_path)
    with pytest.raises(ValueError, match="num_inference_steps=0"):
        make_plan(TOY.name, {**FIXED, "num_inference_steps": 0}, VARY, tmp_path)
    with pytest.raises(ValueError, match="text, numbers and lists only"):
        make_plan(TOY.name, {**FIXED, "image": Image.new("RGB", (64, 64)), "strength": 0.5}, VARY, tmp_path)
    with pytest.raises(ValueError, match="not a model of this series"):
        make_plan("sd4", FIXED, VARY, tmp_path)
    plan = make_plan(TOY.name, FIXED, VARY, tmp_path)
    assert read_plan(plan.path) == plan and len(plan.settings()) == 12
    assert make_plan(TOY.name, FIXED, VARY, tmp_path).path == plan.path  # the same plan, one file


@pytest.mark.parametrize(("processes", "message"), [
    (0, "must be a whole number, 1 or more"),
    ("2", "must be a whole number"),
    (True, "must be a whole number"),
    (13, "more than the sweep's 12 image"),
])
def test_process_counts_that_cannot_work_are_refused_with_the_fix(processes, message):
    with pytest.raises(ValueError, match=message):
        check_processes(processes, 12)


def test_more_cpu_processes_than_cores_are_refused(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    if torch.cuda.is_available():
        pytest.skip("counts GPUs, not cores, where there is a GPU")
    with pytest.raises(ValueError, match="no GPU and 2 CPU core"):
        check_processes(3, 12)
    assert check_processes(2, 12) == 2


def test_claims_keep_an_image_to_one_running_process_and_pass_on_from_a_dead_one(tmp_path):
    assert claim(tmp_path, "a.png")
    assert not claim(tmp_path, "a.png"), "held by a running process (this one)"
    release(tmp_path, "a.png")
    assert claim(tmp_path, "a.png")

    claims = tmp_path / CLAIMS
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # a process of this machine that has ended
    finished = ended.pid
    (claims / "b.png.claim").write_text(json.dumps({"host": socket.gethostname(), "pid": finished, "since": 0}))
    assert claim(tmp_path, "b.png"), "a dead process's claim is taken over"
    assert json.loads((claims / "b.png.claim").read_text())["pid"] == os.getpid()

    (claims / "c.png.claim").write_text(json.dumps({"host": "another-machine", "pid": 1, "since": time.time()}))
    assert not claim(tmp_path, "c.png"), "another machine's recent claim is respected"
    old = time.time() - 2 * 3600
    os.utime(claims / "c.png.claim", (old, old))
    assert claim(tmp_path, "c.png"), "another machine's claim is abandoned after an hour"

    (claims / "d.png.claim").write_text("{")  # half-written: by a process writing it now
    assert not claim(tmp_path, "d.png")


def test_the_multi_gpu_memory_table_follows_helpers_memory():
    rows = {row["model"]: row for row in per_gpu_rows(["large", "medium"], machine="sagemaker-g5-12xlarge")}
    assert rows["SD3.5 Medium"]["route in each process"].startswith("everything on the GPU")
    for row in rows.values():
        peak = float(row["GPU peak per process"].split()[0])
        ram = float(row["RAM, all processes"].split()[0])
        assert peak <= 24 and ram <= 206.2


def test_a_gated_model_without_a_token_is_refused_before_any_process_starts(tmp_path, monkeypatch):
    from helpers.access import MissingTokenError

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no token saved by a login either
    plan = make_plan("large", {"num_inference_steps": 4, "guidance_scale": 4.5}, {"prompt": ["a"], "seed": [0]},
                     tmp_path / "sweep")
    with pytest.raises(MissingTokenError):
        RunningSweep(plan, 1)
    assert not (plan.folder / ".journal").exists()


def test_a_process_that_fails_names_its_error_above_the_launchers_summary(tmp_path, capsys):
    plan = make_plan(TOY.name, FIXED, VARY, tmp_path / "sweep")
    running = RunningSweep(plan, 2)
    plan.path.unlink()  # the processes look for it after their imports, seconds from now
    result = running.wait(progress=False)
    assert result.returncode != 0 and result.made == 0 and len(result.missing()) == 12
    out = capsys.readouterr().out
    assert "12 of the plan's 12 pictures are missing. Launch again" in out
    stopped = out.split("A process stopped with:\n", 1)[1].splitlines()[0]
    assert "does not exist" in stopped and plan.path.name in stopped


def test_each_process_of_a_launch_counts_its_share_of_the_ram(monkeypatch):
    from helpers.machines import MACHINES, _processes_launched_together

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert _processes_launched_together() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # set by torchrun in each of four processes on one machine
    assert _processes_launched_together() == 4
    assert MACHINES["sagemaker-g5-12xlarge"].share(4).host_gb == pytest.approx(206.2 / 4)


def test_a_claim_whose_pid_is_another_process_now_is_taken_over(tmp_path):
    claims = tmp_path / CLAIMS
    claims.mkdir()
    record = {"host": socket.gethostname(), "pid": os.getpid(), "since": 0, "started": -1}  # this pid, earlier owner
    (claims / "e.png.claim").write_text(json.dumps(record))
    assert claim(tmp_path, "e.png"), "a pid reused by an unrelated process does not keep the claim"


def test_an_unreadable_claim_is_honoured_only_for_a_while(tmp_path, monkeypatch):
    from helpers import distributed

    claims = tmp_path / CLAIMS
    claims.mkdir()
    for text in ("{", "[1, 2]", '{"pid": "seven"}'):
        (claims / "f.png.claim").write_text(text)
        assert not claim(tmp_path, "f.png"), text
        monkeypatch.setattr(distributed, "UNREADABLE_CLAIM_S", -1)
        assert claim(tmp_path, "f.png"), text
        monkeypatch.setattr(distributed, "UNREADABLE_CLAIM_S", 60)
        release(tmp_path, "f.png")


def test_a_speed_up_beyond_the_process_count_is_a_caution_not_a_finding():
    from helpers.distributed import LaunchResult, throughput_finding

    def launched(processes, seconds_per_image):
        events = [{"event": "made", "file": f"{i}.png", "rank": 0, "began": i * seconds_per_image,
                   "time": (i + 1) * seconds_per_image} for i in range(8)]
        return LaunchResult("x", processes, 0, 10.0, events, planned=8)

    assert throughput_finding(launched(1, 1.0), launched(2, 0.6)).startswith("2 processes made images 1.67x")
    assert throughput_finding(launched(1, 1.0), launched(2, 0.1)).startswith("Caution: no reading. 2 processes came")
    assert throughput_finding(launched(2, 1.0), launched(2, 0.5)).startswith("No comparison")


def test_processes_share_the_cores_and_keep_to_omp_num_threads(monkeypatch):
    from helpers.distributed import threads_each

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [threads_each(n) for n in (1, 2, 3, 16)] == [8, 4, 2, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # CI's test processes: a one-process launch gets one thread, not 8
    assert threads_each(1) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert threads_each(1) == 6 and threads_each(2) == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "many")  # not a number: not a limit
    assert threads_each(1) == 8
