"""Sweeps spread over several processes, one per GPU, with accelerate: every image made once, nothing lost.

Introduced in notebook 10. A *plan* (model, fixed settings, varied settings, folder) is saved as JSON in the sweep's
folder; `accelerate launch` starts one process per GPU, each running this module on the plan. Each process loads
the model on its own device, takes its share of the plan's images with `PartialState().split_between_processes`,
and writes them into the folder: the same cache `run_sweep` reads, so a finished sweep reads like any other.

Before making an image a process *claims* it: a file that can be created only where none exists. Two launches on
one folder therefore never make an image twice, and a claim left by a process that died is taken over by the next
launch. A killed process loses only the image it was making; launch again and the rest are made.

    accelerate launch --multi_gpu --num_processes 4 -m helpers.distributed work PLAN.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers.checks import (
    check_path,
    checked,
    flag,
    instance,
    listed,
    optional,
    output_folder,
    shown,
    text,
    whole,
    write_output_file,
)
from helpers.experiments import sweep_combinations
from helpers.machines import machine_rule
from helpers.models import full_size_model, model_name

PLANS, CLAIMS, JOURNALS = ".plans", ".claims", ".journal"
"""Subfolders of a sweep's folder: the plans launched on it, the images being made now, what each process did."""
FOREIGN_CLAIM_TIMEOUT_S = 3600
"""A claim by a process on another machine (a shared drive) counts as abandoned after this long."""
POLL_S = 0.5
UNREADABLE_CLAIM_S = 60
"""An unreadable claim (being written, or half-written by a crash) counts as abandoned after this long."""
ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*|python -m helpers\.distributed: error): ")
"""The last line of a Python traceback, or a refusal of this module's command line."""
LAUNCHER_ERRORS = ("torch.distributed.", "subprocess.CalledProcessError")
"""The launchers' own errors after a process failed, which say only that it failed."""


# --- Plans ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What a distributed sweep makes: every combination of `vary` on top of `fixed`, with `model`, into `folder`."""

    model: str
    fixed: dict[str, Any]
    vary: dict[str, list]
    folder: Path

    def settings(self) -> list[dict[str, Any]]:
        """The settings of every image, in sweep order."""
        return [{**self.fixed, **combination} for combination in sweep_combinations(self.fixed, self.vary)]

    @property
    def path(self) -> Path:
        """Where the plan is saved: named by a digest of its content, so equal plans share one file."""
        text = json.dumps({"model": self.model, "fixed": self.fixed, "vary": self.vary}, sort_keys=True)
        return self.folder / PLANS / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"


@checked(model=model_name, fixed=instance(dict, "a dict of settings"),
         vary=instance(dict, "a dict of settings and their lists of values"), folder=output_folder)
def make_plan(model: str, fixed: dict[str, Any], vary: dict[str, Sequence], folder: str | Path) -> Plan:
    """A checked plan, saved in `folder`. Every setting is checked now (as `run_sweep` checks them), and must be
    plain data (text, numbers, lists) to travel to other processes: text-to-image sweeps."""
    from helpers.models import get_model

    spec = get_model(model)
    sweep_combinations(fixed, vary)  # vary's lists, before they are copied into the plan
    plan = Plan(spec.name, dict(fixed), {name: list(values) for name, values in vary.items()}, Path(folder))
    settings = plan.settings()  # raises on anything run_sweep would refuse
    try:
        json.dumps(settings, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"a setting cannot be written into a plan ({error}): a distributed sweep takes text, numbers "
                         "and lists only. Sweep image-to-image or inpainting with run_sweep in one process.") from None
    plan.path.parent.mkdir(parents=True, exist_ok=True)
    write_output_file(plan.path, json.dumps({"model": plan.model, "fixed": plan.fixed, "vary": plan.vary}, indent=1))
    return plan


def read_plan(path: str | Path) -> Plan:
    """The plan saved at `path` (its folder is the sweep's folder)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        return Plan(str(record["model"]), dict(record["fixed"]), dict(record["vary"]), path.parent.parent)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{path} is not a plan written by make_plan() ({type(error).__name__}): write it again with "
                         "helpers.distributed.make_plan().") from None


# --- Claims -----------------------------------------------------------------------------------------------------


def _record() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "started": _started(os.getpid())}


def _started(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat field 22): with the pid, it names one
    process, where a pid alone may since belong to another (None where /proc does not say)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Whether process `pid` of this machine is running (a zombie, killed but not yet collected, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _abandoned(record: dict[str, Any] | None, age_s: float) -> bool:
    if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
        # unreadable: being written right now, or left half-written by a crash
        return age_s > UNREADABLE_CLAIM_S
    if record.get("host") == socket.gethostname():
        pid = record["pid"]
        if not _alive(pid):
            return True
        started = record.get("started")
        return started is not None and _started(pid) not in (None, started)  # the pid is another process's now
    return age_s > FOREIGN_CLAIM_TIMEOUT_S


def _read_claim(path: Path) -> tuple[dict[str, Any] | None, float] | None:
    """(the claim's record or None if unreadable, its age in seconds), or None when there is no claim."""
    try:
        age = time.time() - path.stat().st_mtime
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text), age
    except ValueError:
        return None, age


def _create_claim(path: Path) -> bool:
    try:
        handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(handle, "w") as file:
        json.dump(_record(), file)
    return True


def claim(folder: Path, name: str) -> bool:
    """Claim image `name` of the sweep in `folder` for this process: True if it is now ours to make, False if a
    running process holds it. A claim whose process has died is taken over (if two processes try at once, one
    wins)."""
    path = folder / CLAIMS / f"{name}.claim"
    path.parent.mkdir(parents=True, exist_ok=True)
    if _create_claim(path):
        return True
    found = _read_claim(path)
    if found is None:
        return _create_claim(path)
    record, age = found
    if not _abandoned(record, age):
        return False
    aside = path.with_name(f"{path.name}.abandoned-{os.getpid()}")
    try:
        os.rename(path, aside)  # atomic: of several processes taking over, one moves the old claim
    except FileNotFoundError:
        return False
    moved = _read_claim(aside)
    if moved is None or moved[0] != record:  # we moved a fresh claim made in the meantime: put it back
        with contextlib.suppress(OSError):
            os.link(aside, path)
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return _create_claim(path)


def release(folder: Path, name: str) -> None:
    """Give up this process's claim on image `name` (done, or failed)."""
    (folder / CLAIMS / f"{name}.claim").unlink(missing_ok=True)


# --- The work of one process --------------------------------------------------------------------------------------


class Journal:
    """One process's record of a launch, a JSON line per event, in the sweep's folder: what it loaded, each image
    it made or found made, and when. Read back by `LaunchResult`; appended line by line, so a killed process
    leaves a record up to its last finished image."""

    def __init__(self, folder: Path, launch: str, rank: int):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", launch):
            raise ValueError(f"launch={shown(launch)} must be a plain name (letters, digits, '.', '_', '-'): it names "
                             "the journal files inside the sweep's folder.")
        self.path = folder / JOURNALS / f"{launch}-rank{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rank = rank

    def write(self, event: str, **details: Any) -> None:
        with open(self.path, "a") as file:
            file.write(json.dumps({"event": event, "rank": self.rank, "pid": os.getpid(), "time": time.time(),
                                   **details}) + "\n")


@checked(plan_path=check_path, launch=text)
def work(plan_path: str | Path, launch: str) -> None:
    """Run by each process of `accelerate launch`: load the model on this process's device, then make this
    process's share of the plan's images that are neither in the folder nor claimed by a running process
    (`generate` finds those already made, checked as `run_sweep` checks them)."""
    import torch
    from accelerate import PartialState

    from helpers.experiments import image_key, key_name, pipeline_fingerprint
    from helpers.loading import load_pipeline

    state = PartialState(cpu=not torch.cuda.is_available())  # without a GPU: one CPU process each (gloo)
    plan = read_plan(plan_path)
    journal = Journal(plan.folder, launch, state.process_index)
    device = "cpu" if state.device.type == "cpu" else f"cuda:{state.device.index or 0}"
    started = time.time()
    pipe = load_pipeline(plan.model, device=device)
    fingerprint = pipeline_fingerprint(pipe)
    journal.write("loaded", device=device, seconds=time.time() - started, processes=state.num_processes)
    if state.is_main_process:  # the whole plan by file name: what the launch is counted against when it ends
        journal.write("plan", pictures=[{"file": key_name(image_key(pipe, plan.model, settings, fingerprint)),
                                         **{name: settings[name] for name in plan.vary}}
                                        for settings in plan.settings()])
    with state.split_between_processes(plan.settings()) as mine:
        held_elsewhere = []
        for settings in mine:
            name = key_name(image_key(pipe, plan.model, settings, fingerprint))
            if not claim(plan.folder, name):
                journal.write("left to another process", file=name)
                held_elsewhere.append((name, settings))
                continue
            _make(pipe, plan, settings, name, fingerprint, journal)
        # Claims held by others: wait until their picture is there, or take the claim over once it is abandoned
        # (its process died, its pid is another's now, or it stayed unreadable): never leave a picture missing.
        for name, settings in held_elsewhere:
            while not (plan.folder / name).is_file():
                if claim(plan.folder, name):
                    _make(pipe, plan, settings, name, fingerprint, journal)
                    break
                time.sleep(POLL_S)
    journal.write("done")
    state.wait_for_everyone()


def _make(pipe, plan, settings, name: str, fingerprint: str, journal) -> None:
    """Make (or find) one claimed picture, then give the claim up."""
    from helpers.experiments import generate

    try:
        begun = time.time()
        _, made = generate(pipe, plan.model, settings, plan.folder, fingerprint=fingerprint)
        journal.write("made" if made else "found", file=name, began=begun)
    finally:
        release(plan.folder, name)


# --- Launching ----------------------------------------------------------------------------------------------------


def _free_port() -> int:
    """A TCP port free now, for the processes of one launch to meet on (two launches must not share one)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def check_processes(num_processes: object, images: int) -> int:
    """`num_processes` if this machine can run that many for a sweep of `images` images, else a clear error."""
    import torch

    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"num_processes={shown(num_processes)} must be a whole number, 1 or more (one per GPU).")
    if num_processes > images:
        raise ValueError(f"num_processes={num_processes} is more than the sweep's {images} image(s): "
                         f"{num_processes - images} process(es) would load the model and have nothing to make. "
                         f"Use num_processes={images} or fewer.")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and num_processes > gpus:
        raise ValueError(f"num_processes={num_processes}, but this machine has {gpus} GPU(s): one process per GPU. "
                         f"Use num_processes={gpus} or fewer.")
    cores = os.cpu_count() or 1
    if not gpus and num_processes > cores:
        raise ValueError(f"num_processes={num_processes}, but this machine has no GPU and {cores} CPU core(s): "
                         f"the processes would only queue for cores. Use num_processes={cores} or fewer.")
    return num_processes


def launch_command(plan: Plan, num_processes: int, launch: str, threads_per_process: int) -> list[str]:
    """The `accelerate launch` command line for `plan` (as a list for subprocess)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--num_cpu_threads_per_process", str(threads_per_process)]
    if num_processes > 1:  # torchrun's launcher: one process each, on CPUs too (without it accelerate starts one)
        command += ["--multi_gpu", "--main_process_port", str(_free_port())]
    return command + ["-m", "helpers.distributed", "work", str(plan.path), "--launch", launch]


@checked(command=listed(text))
def shown_command(command: list[str]) -> str:
    """The command as a reader would type it in a terminal."""
    start = command.index("accelerate.commands.launch") + 1
    skip = {"--main_process_port", "--launch"}
    words, parts = [], iter(command[start:])
    for part in parts:
        if part in skip:
            next(parts)
            continue
        words.append(part)
    return "accelerate launch " + " ".join(words)


@dataclass
class LaunchResult:
    """What one launch did, read from its processes' journals."""

    launch: str
    num_processes: int
    returncode: int
    seconds: float
    """Wall time of the whole launch: starting the processes, loading the model, making the images."""
    events: list[dict[str, Any]] = field(repr=False)
    planned: int = 0
    """Pictures in the plan: a launch is complete when every one is in the folder."""

    def missing(self) -> list[dict[str, Any]]:
        """The plan's pictures that no process of this launch made or found, each with its varied settings and
        file name (with only a count to go on, when the launch stopped before its plan was written out: then
        one entry per picture, {'file': None})."""
        done = {entry["file"] for entry in self.events if entry["event"] in ("made", "found")}
        plan = next((entry["pictures"] for entry in self.events if entry["event"] == "plan"), None)
        if plan is None:
            return [{"file": None}] * max(0, self.planned - len(done))
        return [picture for picture in plan if picture["file"] not in done]

    def files(self, event: str = "made") -> list[str]:
        """The images this launch made (or found made, or left to another process), by file name."""
        return [entry["file"] for entry in self.events if entry["event"] == event]

    @property
    def made(self) -> int:
        return len(self.files("made"))

    @property
    def making_seconds(self) -> float:
        """From the first image begun to the last image finished, over all processes."""
        made = [entry for entry in self.events if entry["event"] == "made"]
        return max(entry["time"] for entry in made) - min(entry["began"] for entry in made) if made else 0.0

    def row(self) -> dict[str, Any]:
        """A table row: images made, per process, and throughput with and without the start-up."""
        per_process = {}
        for entry in self.events:
            if entry["event"] == "made":
                per_process[entry["rank"]] = per_process.get(entry["rank"], 0) + 1
        making = self.making_seconds
        return {
            "processes": self.num_processes,
            "images made": self.made,
            "missing": len(self.missing()),
            "per process": ", ".join(str(per_process.get(rank, 0)) for rank in range(self.num_processes)),
            "whole launch": f"{self.seconds:.1f} s",
            "images/s, whole launch": f"{self.made / self.seconds:.2f}" if self.made else "-",
            "images/s, making images": f"{self.made / making:.2f}" if making else "-",
            "exit": "ok" if self.returncode == 0 else f"failed ({self.returncode})",
        }


@checked(one=instance(LaunchResult, "the LaunchResult of a one-process launch"),
         many=instance(LaunchResult, "the LaunchResult of a launch with more processes"))
def throughput_finding(one: LaunchResult, many: LaunchResult) -> str:
    """What two launches of one plan say about the extra processes, from the images-per-second of making images:
    the speed-up, or a caution where it cannot be read (more than N times with N processes, or nothing made)."""
    if one.num_processes != 1 or many.num_processes < 2 or not one.making_seconds or not many.making_seconds:
        return "No comparison: it needs a one-process launch and a launch with more processes that both made images."
    speedup = (many.made / many.making_seconds) / (one.made / one.making_seconds)
    processes = many.num_processes
    if speedup > processes * 1.15:
        return (f"Caution: no reading. {processes} processes came out {speedup:.1f}x as fast as one, more than "
                f"{processes} processes can give: the machine's load changed between the two launches. Each is a "
                "single launch; run the cell again on an idle machine.")
    return (f"{processes} processes made images {speedup:.2f}x as fast as one (one launch each: a single reading, "
            "without a spread).")


def threads_each(num_processes: int) -> int:
    """CPU threads for each of `num_processes` processes: the cores shared out among them, and no more than
    OMP_NUM_THREADS where it is set. A machine whose cores other work uses too (a CI machine's test processes)
    sets it: a process of two threads on a core another process keeps busy ran 5 times slower there (notebook
    10's one-process launch: 80 s against 14 on an idle machine)."""
    each = max(1, (os.cpu_count() or 1) // num_processes)
    limit = os.environ.get("OMP_NUM_THREADS", "").strip()
    return min(each, int(limit)) if limit.isdigit() and int(limit) > 0 else each


class RunningSweep:
    """A launch in progress: `wait()` shows a progress bar until it ends and returns its LaunchResult."""

    @checked(plan=instance(Plan, "a plan from make_plan()"), threads_per_process=optional(whole(1, 256)))
    def __init__(self, plan: Plan, num_processes: int, threads_per_process: int | None = None):
        from helpers.loading import check_can_load

        self.plan = plan
        self.num_processes = check_processes(num_processes, len(plan.settings()))
        check_can_load(plan.model)  # a missing token or licence stops here, not in every process
        threads = threads_per_process or threads_each(self.num_processes)
        self.launch = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.command = launch_command(plan, self.num_processes, self.launch, threads)
        self.log = plan.folder / JOURNALS / f"{self.launch}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        with open(self.log, "w") as log:
            # The child's own process group: stopping it stops every process it started.
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def events(self) -> list[dict[str, Any]]:
        """Every journal line of this launch so far."""
        entries = []
        for path in sorted((self.plan.folder / JOURNALS).glob(f"{self.launch}-rank*.jsonl")):
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):  # a line being written right now
                    entries.append(json.loads(line))
        return entries

    def crash_one_process(self, after_images: int = 1, timeout_s: float = 600) -> int:
        """Kill one worker (SIGKILL, as a crash or an out-of-memory kill would) once the launch has made
        `after_images` images and the main process has written the plan; returns its pid. For showing, and
        testing, what a crash leaves behind. (Without waiting for the plan, a main process that loaded slowly on a
        busy machine was killed with the other before writing it, and the missing pictures had no names.)"""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            events = self.events()
            workers = {entry["rank"]: entry["pid"] for entry in events if entry["event"] == "loaded"}
            planned = any(entry["event"] == "plan" for entry in events)
            if sum(entry["event"] == "made" for entry in events) >= after_images and workers and planned:
                victim = workers[max(workers)]
                os.kill(victim, signal.SIGKILL)
                return victim
            if self.process.poll() is not None:
                raise RuntimeError(f"the launch ended before {after_images} image(s) were made; see {self.log}.")
            time.sleep(0.05)
        raise TimeoutError(f"no {after_images} image(s) made within {timeout_s} s; see {self.log}.")

    def wait(self, progress: bool = True) -> LaunchResult:
        """Wait for the launch to end, showing images made; on a failure, print the end of its log."""
        from tqdm.auto import tqdm

        total = len(self.plan.settings())
        with tqdm(total=total, desc=f"{self.num_processes} process(es)", disable=not progress) as bar:
            try:
                while self.process.poll() is None:
                    bar.update(sum(entry["event"] in ("made", "found") for entry in self.events()) - bar.n)
                    time.sleep(POLL_S)
            except KeyboardInterrupt:
                os.killpg(self.process.pid, signal.SIGTERM)  # stop the workers too; finished images stay
                raise
            bar.update(sum(entry["event"] in ("made", "found") for entry in self.events()) - bar.n)
        result = LaunchResult(self.launch, self.num_processes, self.process.returncode,
                              time.perf_counter() - self.started, self.events(), planned=total)
        missing = result.missing()
        if missing:
            named = [", ".join(f"{key}={value!r}" for key, value in picture.items() if key != "file")
                     for picture in missing if picture["file"] is not None]
            print(f"{len(missing)} of the plan's {total} pictures are missing"
                  + (f": {'; '.join(named[:10])}{' ...' if len(named) > 10 else ''}" if named else "")
                  + ". Launch again: finished pictures are kept, and only the missing ones are made.")
        if result.returncode != 0:
            lines = self.log.read_text(errors="replace").splitlines()
            errors = [line for line in lines if ERROR_LINE.match(line) and not line.startswith(LAUNCHER_ERRORS)]
            print(f"The launch ended with exit status {result.returncode}. "
                  + (f"A process stopped with:\n{errors[-1]}\n" if errors else "")
                  + f"The end of its log ({self.log}):")
            print("\n".join(lines[-8:]))
        return result


@checked(plan=instance(Plan, "a plan from make_plan()"), threads_per_process=optional(whole(1, 256)), progress=flag)
def launch(plan: Plan, num_processes: int, *, threads_per_process: int | None = None,
           progress: bool = True) -> LaunchResult:
    """Run `plan` with `num_processes` processes (one per GPU; without a GPU, CPU processes) and wait for it."""
    return RunningSweep(plan, num_processes, threads_per_process).wait(progress)


@checked(plan=instance(Plan, "a plan from make_plan()"))
def folder_report(plan: Plan) -> dict[str, int]:
    """What the sweep's folder holds for `plan`: images finished, claims open now, journals written."""
    return {
        "images in the folder": len(list(plan.folder.glob("*.png"))),
        "open claims": len(list((plan.folder / CLAIMS).glob("*.claim"))),
        "of the plan's images": len(plan.settings()),
    }


# --- Memory on a multi-GPU machine ----------------------------------------------------------------------------------


@checked(models=listed(full_size_model, 1, 10), machine=machine_rule)
def per_gpu_rows(models: Sequence[str], machine: str = "sagemaker-g5-12xlarge") -> list[dict[str, Any]]:
    """For a catalogue machine (helpers.machines) running one process per GPU: the route `load_pipeline` takes in
    each process (each gets 1/N of the RAM), its estimated peak GPU memory, and the RAM all processes hold
    together (helpers.memory's estimates)."""
    from helpers.machines import get_machine
    from helpers.memory import STRATEGIES, estimate_on
    from helpers.models import get_model
    from helpers.routes import plan_route

    whole = get_machine(machine)
    share = whole.share(whole.gpus)
    rows = []
    for name in models:
        spec = get_model(name)
        try:
            route = plan_route(spec, machine=share)
        except MemoryError:
            rows.append({"model": spec.title, "route in each process": "nothing fits", "GPU peak per process": "-",
                         "RAM, all processes": "-"})
            continue
        result = estimate_on(spec.name, route.strategy, share, spec.height, vae_tiling=route.vae_tiling)
        rows.append({
            "model": spec.title,
            "route in each process": STRATEGIES[route.strategy].description,
            "GPU peak per process": f"{result.peak_gb:.1f} GB of {whole.gpu_gb:g}",
            "RAM, all processes": f"{result.host_gb * whole.gpus:.0f} GB of {whole.host_gb:.0f}",
        })
    return rows


# --- Command line ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.distributed", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("work", help="make one process's share of a plan (run by accelerate launch)")
    worker.add_argument("plan", type=Path, help="a plan file written by helpers.distributed.make_plan")
    worker.add_argument("--launch", default=None, help="a name for this launch, shared by its processes")
    args = parser.parse_args(argv)
    if not args.plan.is_file():
        parser.error(f"plan {args.plan} does not exist: write one with helpers.distributed.make_plan().")
    work(args.plan, args.launch or os.environ.get("TORCHELASTIC_RUN_ID", "launch"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
