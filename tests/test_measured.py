"""What gpu_check measured, as notebook 03 reads it: every shipped report, labelled, and its prose in step."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers.measured import cases_in, measured_case, measured_cases

NOTEBOOK_03 = Path(__file__).resolve().parent.parent / "notebooks" / "03_timing_on_h100.ipynb"


def test_every_shipped_case_says_where_when_and_with_what_it_was_measured():
    cases = measured_cases()
    assert len(cases) >= 10
    for case in cases:
        assert case.gpu.startswith("NVIDIA H100") and re.fullmatch(r"\d{4}-\d{2}-\d{2}", case.date), case
        assert "torch" in case.versions and "diffusers" in case.versions and case.runs >= 1 and case.seconds > 0


def test_a_report_without_a_date_is_labelled_so(tmp_path):
    report = {"environment": {"gpu": "NVIDIA L4", "versions": {"torch": "2.13.0"}},
              "checks": [{"check": "medium", "cases": [{"case": "bf16 on the GPU", "model": "medium", "steps": 28,
                                                        "median_s": 7.5, "runs_s": [7.4, 7.5, 7.6]}]}]}
    (tmp_path / "l4.json").write_text(json.dumps(report))
    [case] = cases_in(tmp_path)
    assert (case.gpu, case.date, case.runs, case.seconds) == ("NVIDIA L4", "date not recorded", 3, 7.5)


def test_an_unmeasured_case_is_named_with_the_measured_ones():
    with pytest.raises(ValueError, match=r"case='fp8' was not measured\. Measured: medium: bf16 on the GPU"):
        measured_case("large", "fp8")


def test_notebook_03s_summary_quotes_what_was_measured():
    """The summary's H100 figures are the shipped measurements, so the prose cannot drift from them."""
    cells = json.loads(NOTEBOOK_03.read_text())["cells"]
    summary = next("".join(cell["source"]) for cell in cells if "".join(cell["source"]).startswith("## Summary"))
    for check, case in [("large", "bf16 on the GPU"), ("medium", "bf16 on the GPU"),
                        ("large-nf4-model-offload", "model offload"), ("large", "NF4 transformer, T5 dropped"),
                        ("large", "Turbo's settings")]:
        assert f"{measured_case(check, case).seconds:.2f} s" in summary, (check, case)
    large, nf4 = measured_case("large", "bf16 on the GPU"), measured_case("large", "NF4 transformer on the GPU")
    offloaded = measured_case("large-nf4-model-offload", "model offload")
    assert f"cost Large {nf4.seconds / large.seconds - 1:.0%}" in summary
    assert f"added {offloaded.seconds - nf4.seconds:.1f} s" in summary


def test_a_row_says_what_its_check_adds_to_the_case():
    """Notebook 03's table: the NF4 offload case is labelled with its NF4 transformer, which only its check's name
    says; a case that names it already is left as it is."""
    assert measured_case("large-nf4-model-offload", "model offload").row()["case"] == "NF4 transformer, model offload"
    assert measured_case("large", "NF4 transformer on the GPU").row()["case"] == "NF4 transformer on the GPU"
    assert measured_case("medium-model-offload", "model offload").row()["case"] == "model offload"
