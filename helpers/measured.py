"""What `python -m helpers.gpu_check` measured on a real GPU, read from its reports shipped in `helpers/gpu_runs/`.

Introduced in notebook 03, which shows these figures beside the reader's own timings: SD3.5 at full size on an
H100, where a reader without one (or on the toy model) cannot measure them. Each case carries the GPU, the date and
the library versions it was measured with. benchmarks/RESULTS.md discusses them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from helpers.checks import checked, shown, text

RUNS_DIR = Path(__file__).resolve().parent / "gpu_runs"
DATES = "dates.json"
"""The date of each report measured before gpu_check wrote its own date (file name -> YYYY-MM-DD)."""


CHECK_WORDS = {"nf4": "NF4 transformer"}
"""What a check's name says of its cases that their own names leave out: check 'large-nf4-model-offload', case
'model offload'."""


@dataclass(frozen=True)
class MeasuredCase:
    """One timed case of a gpu_check report."""

    check: str
    case: str
    model: str
    steps: int
    seconds: float
    """Median seconds per image (1024x1024, one image)."""
    runs: int
    """How many timed runs the median is of."""
    gpu_peak_gb: float | None
    host_gb: float | None
    """The process's largest resident memory so far (GB)."""
    gpu: str
    date: str
    versions: str
    report: str
    """The report file it comes from."""

    @property
    def label(self) -> str:
        """The case's name, with what its check's name adds to it (e.g. 'NF4 transformer, model offload')."""
        said = [words for key, words in CHECK_WORDS.items() if key in self.check.split("-") and words not in self.case]
        return ", ".join([*said, self.case])

    def row(self) -> dict[str, object]:
        return {"model": self.model, "case": self.label, "steps": self.steps, "s per image": f"{self.seconds:.2f}",
                "timed runs": self.runs,
                "GPU peak (GB)": "-" if self.gpu_peak_gb is None else f"{self.gpu_peak_gb:.1f}",
                "host RAM (GB)": "-" if self.host_gb is None else f"{self.host_gb:.1f}"}


def reports(folder: Path = RUNS_DIR) -> list[tuple[str, dict]]:
    """(file name, report) for each gpu_check report in `folder`, each dated (from the report or DATES)."""
    dates = json.loads((folder / DATES).read_text()) if (folder / DATES).exists() else {}
    found = []
    for path in sorted(folder.glob("*.json")):
        if path.name == DATES:
            continue
        report = json.loads(path.read_text())
        report.setdefault("environment", {}).setdefault("date", dates.get(path.name, "date not recorded"))
        found.append((path.name, report))
    return found


def measured_cases() -> list[MeasuredCase]:
    """Every timed case of the shipped reports (the stand-in's option checks left out: they time a random 64-pixel
    model), in the order measured."""
    return cases_in(RUNS_DIR)


def cases_in(folder: Path) -> list[MeasuredCase]:
    """Every timed case of the gpu_check reports in `folder`."""
    cases = []
    for name, report in reports(folder):
        environment = report["environment"]
        versions = ", ".join(f"{package} {version}" for package, version in environment.get("versions", {}).items()
                             if version and package in ("torch", "diffusers", "bitsandbytes"))
        for check in report.get("checks", []):
            if check["check"] == "stand-in-loading":
                continue
            for case in check.get("cases", []):
                if "median_s" not in case:
                    continue
                cases.append(MeasuredCase(
                    check=check["check"], case=case["case"], model=case.get("model", check["check"]),
                    steps=case["steps"], seconds=case["median_s"], runs=len(case.get("runs_s", [case["median_s"]])),
                    gpu_peak_gb=case.get("gpu_peak_gb"),
                    host_gb=case.get("host_rss_max_gb"), gpu=environment.get("gpu", "no GPU"),
                    date=environment["date"], versions=versions, report=name))
    return cases


@checked(check=text, case=text)
def measured_case(check: str, case: str) -> MeasuredCase:
    """The case named `case` of the gpu_check check `check` (e.g. 'large', 'bf16 on the GPU')."""
    cases = measured_cases()
    for found in cases:
        if found.check == check and found.case == case:
            return found
    known = "; ".join(f"{found.check}: {found.case}" for found in cases)
    raise ValueError(f"check={shown(check)}, case={shown(case)} was not measured. Measured: {known}.")
