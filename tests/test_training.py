"""Training the toy model: a few steps on a small pool. Losses fall, runs repeat exactly, a killed run resumes."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import kill_part_way
from helpers import training

pytestmark = pytest.mark.usefixtures("one_thread")
SHORT = training.Recipe(pool=128, vae_steps=12, vae_batch=8, steps=40, batch=8, warmup=2, checkpoint_every=4)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return {f"{path.parent.name}/{name}": tensor for path in sorted(folder.glob("*/*.safetensors"))
            for name, tensor in load_file(path).items()}


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, one_thread) -> Path:
    return training.train(tmp_path_factory.mktemp("run") / "model", SHORT, show_progress=False)


def test_a_short_run_saves_a_pipeline_with_its_recipe(short_run):
    summary = json.loads((short_run / "training.json").read_text())
    assert summary["steps"] == SHORT.steps and summary["vae_steps"] == SHORT.vae_steps
    assert summary["recipe"]["seed"] == SHORT.seed and summary["code_version"] == training.code_version()
    assert summary["t5_max_length"] == training.T5_MAX_LENGTH
    assert all(tensor.dtype == torch.float16 for tensor in weights(short_run).values())
    # ... and every part loads in float32 by the plain call (tests/test_plain_diffusers.py runs it on the shipped toy)
    assert {json.loads((short_run / name / "config.json").read_text())["dtype"] for name in training.TEXT_ENCODERS} \
        == {"float32"}
    vae = json.loads((short_run / "vae" / "config.json").read_text())
    assert vae["scaling_factor"] == summary["latent_scale"] and vae["shift_factor"] == summary["latent_shift"]


def test_losses_fall(short_run):
    summary = json.loads((short_run / "training.json").read_text())
    vae = [loss for _, loss in summary["vae_loss_curve"]]
    assert sum(vae[-3:]) < sum(vae[:3])
    curve = [loss for _, loss in summary["loss_curve"]]
    assert sum(curve[-3:]) < sum(curve[:3])


def test_a_killed_run_resumes_to_the_same_weights(short_run, tmp_path):
    """Also the recipe's reproducibility: the killed run started afresh, in another process, from the same seed."""
    out, work = tmp_path / "model", tmp_path / "work"
    recipe = ", ".join(f"{name}={value!r}" for name, value in vars(SHORT).items())
    script = (f"from helpers import training; training.train({str(out)!r}, training.Recipe({recipe}), "
              f"work={str(work)!r}, show_progress=False)")
    # Killed once the transformer stage has saved a checkpoint, part-way through.
    checkpoint = work / training.CHECKPOINT
    kill_part_way(script, lambda: checkpoint.is_file() and _stage(checkpoint) == "transformer")
    assert not out.exists()
    resumed = training.train(out, SHORT, work=work, show_progress=False)
    first, second = weights(short_run), weights(resumed)
    assert all(torch.equal(first[name], second[name]) for name in first)


def _stage(checkpoint) -> str | None:
    try:
        return training.load_checkpoint(checkpoint)["stage"]
    except ValueError:  # caught between two writes of a file the run replaces atomically: read it next time
        return None


def test_an_existing_out_folder_that_is_not_a_trained_model_is_left_alone(tmp_path, capsys):
    mine = tmp_path / "holiday-photos"
    mine.mkdir()
    (mine / "beach.jpg").write_bytes(b"not ours")
    with pytest.raises(SystemExit):
        training.main(["train", "--out", str(mine), "--steps", "1", "--vae-steps", "1"])
    assert "exists and is not a model this command trained" in capsys.readouterr().err
    assert (mine / "beach.jpg").read_bytes() == b"not ours" and not mine.with_name("holiday-photos.work").exists()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ValueError, match="is left as it is"):
        training.train(tmp_path / "a-file", SHORT, show_progress=False)


def test_a_planted_pickle_is_never_loaded_and_a_damaged_checkpoint_is_named(tmp_path):
    import pickle

    work = tmp_path / "work"
    work.mkdir()
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (work / "checkpoint.pt").write_bytes(pickle.dumps(Payload()))
    (work / training.CHECKPOINT).write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="is damaged or not one of helpers.training's"):
        training.train(tmp_path / "model", SHORT, work=work, show_progress=False)
    assert not marker.exists()


def test_a_checkpoint_round_trips_tensors_and_structure(tmp_path):
    payload = {"stage": "vae", "progress": {"step": 3, "loss": [0.5, 0.25], "shift": None},
               "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2, 2)}},
                             "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.99), "params": [0]}]}}
    training.save_checkpoint(payload, tmp_path / "c.safetensors")
    loaded = training.load_checkpoint(tmp_path / "c.safetensors")
    assert loaded["progress"] == payload["progress"] and loaded["stage"] == "vae"
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], torch.ones(2, 2))  # int keys, as torch needs
    assert loaded["optimizer"]["param_groups"][0]["betas"] == [0.9, 0.99]


def test_a_work_folder_of_another_recipe_is_refused(short_run, tmp_path):
    other = training.Recipe(**{**vars(SHORT), "steps": SHORT.steps + 1})
    with pytest.raises(ValueError, match="holds checkpoints of another recipe"):
        training.train(tmp_path / "model", other, work=short_run.with_name("model.work"), show_progress=False)


def test_the_command_line_refuses_bad_numbers(capsys):
    with pytest.raises(SystemExit):
        training.main(["train", "--out", "x", "--steps", "0"])
    assert "--steps=0 must be a whole number from 1 to 1,000,000" in capsys.readouterr().err
