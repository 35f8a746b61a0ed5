"""LoRA fine-tuning of the toy (notebook 11): a LoRA trained here teaches the ring, keeps the old prompts, loads
with plain diffusers, equals the base model at scale 0, resumes after a kill; a file that does not fit is named."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import kill_part_way
from helpers import lora
from helpers.evaluation import evaluation_scenes, generate_batch, judged
from helpers.experiments import paired_change, pipeline_fingerprint
from helpers.images import output_dir
from helpers.loading import toy_model_dir

COUNT = 32
"""Pictures per measurement: paired by seed across the base model and the LoRA."""
pytestmark = pytest.mark.usefixtures("one_thread")
SHORT = lora.LoraRecipe(steps=40, batch=4, pool=16, warmup=2, checkpoint_every=4)


def toy():
    """A toy pipeline of its own (load_pipeline shares one per route): LoRAs loaded into it stay in it."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(toy_model_dir(), dtype=torch.float32, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def trained(one_thread) -> Path:
    """Notebook 11's adapter: its call, into its folder. conftest runs notebook 11 and this file in one test process,
    the notebook first: its finished checkpoint is then found and only saved again; alone, this file trains."""
    return lora.train_lora(toy(), output_dir() / "ring-lora", show_progress=False)


@pytest.fixture(scope="module")
def settings():
    from helpers.models import get_model

    return get_model("toy").recommended()


def concept_scenes(count: int = COUNT):
    return [lora.concept_scene(seed) for seed in range(count)]


def test_the_lora_teaches_the_ring_and_keeps_the_old_prompts(trained, settings):
    """What notebook 11 finds, judged so that no change of one or two pictures flips the verdict (a LoRA trained on
    another CPU or library version differs in a few pixels). A raw bound, kept >= before - 5%, once failed at 28
    against 30 of 32 where the notebook's own sign test said "no evidence".

    Measured on 2026-12-08, AVX512 and default kernels (one thread, as every test of this file): rings in 25 of 32
    with the LoRA and none without (sign test p = 6e-08) under both. Old prompts: lower in 4, higher in 2 (p = 0.69)
    with AVX512, lower in 4, higher in 0 (p = 0.12) with the default kernels: two more seeds lower would make that
    "lower" (p = 0.03), so the sign test sits too near its edge to assert. The test bounds the count instead: at
    least 22 of 32 old prompts still followed (measured: 2 and 4 fewer than the base model, which follows 30 with
    AVX512), far above what a LoRA trained without prior preservation keeps (13 of 64 in notebook 11)."""
    base, tuned = toy(), toy()
    tuned.load_lora_weights(trained)  # plain diffusers
    rings, old = concept_scenes(), evaluation_scenes(COUNT)
    seeds = list(range(COUNT))
    without = judged(generate_batch(base, [s.caption for s in rings], seeds, **settings), rings)
    with_lora = judged(generate_batch(tuned, [s.caption for s in rings], seeds, **settings), rings)
    taught = paired_change(without.shapes, with_lora.shapes)
    assert taught.direction == "higher" and sum(with_lora.shapes) >= 17 and sum(without.shapes) <= 2, taught
    kept = judged(generate_batch(tuned, [s.caption for s in old], seeds, **settings), old)
    assert sum(kept.followed) >= 22, paired_change(
        judged(generate_batch(base, [s.caption for s in old], seeds, **settings), old).followed, kept.followed)


def test_at_scale_0_the_pictures_equal_the_base_models(trained, settings):
    base, tuned = toy(), toy()
    tuned.load_lora_weights(trained, adapter_name="ring")
    prompts, seeds = [s.caption for s in concept_scenes(4)], [0, 1, 2, 3]
    plain = generate_batch(base, prompts, seeds, **settings)
    full = pipeline_fingerprint(tuned)
    tuned.set_adapters(["ring"], [0.0])
    scaled = generate_batch(tuned, prompts, seeds, **settings)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(plain, scaled, strict=True))
    # a sweep's cache tells the scales apart: pictures at scale 0 are never reused for scale 1
    assert pipeline_fingerprint(tuned) != full
    tuned.set_adapters(["ring"], [1.0])
    assert pipeline_fingerprint(tuned) == full


def test_the_scale_slider_scales_each_picture_and_leaves_the_pipeline_as_it_was(trained, settings, tmp_path):
    from helpers.experiments import generate
    from helpers.widgets import LoraScaleExplorer

    base, tuned = toy(), toy()
    scene = lora.concept_scene(0)
    one = {"prompt": scene.caption, "seed": 0, **settings}
    with pytest.raises(ValueError, match="no LoRA loaded"):
        LoraScaleExplorer(base, "toy", prompt=scene.caption, folder=tmp_path, **settings)
    with pytest.raises(ValueError, match="has none loaded"):
        generate(base, "toy", {**one, "joint_attention_kwargs": {"scale": 0.5}}, tmp_path)
    plain, _ = generate(base, "toy", one, tmp_path)
    tuned.load_lora_weights(trained, adapter_name="ring")
    loaded = pipeline_fingerprint(tuned)
    explorer = LoraScaleExplorer(tuned, "toy", prompt=scene.caption, seed=0, scale=0.0, folder=tmp_path, **settings)
    assert "joint_attention_kwargs={&#x27;scale&#x27;: 0.0}" in explorer.settings.value
    assert np.array_equal(np.asarray(Image.open(plain)), np.asarray(Image.open(explorer.generate())))
    explorer.controls["lora scale"].value = 1.0
    full = explorer.generate()
    assert "generated now" in explorer.settings.value
    # scale 1 is the LoRA as loaded: the same picture, under the same key, as a call without the setting
    assert generate(tuned, "toy", one, tmp_path) == (full, False)
    assert pipeline_fingerprint(tuned) == loaded, "the per-picture scale leaves the adapters' own scales alone"


def test_training_leaves_the_pipeline_as_it_was(tmp_path):
    pipe = toy()
    before = pipeline_fingerprint(pipe)
    grads = {name: parameter.requires_grad for name, parameter in pipe.transformer.named_parameters()}
    lora.train_lora(pipe, tmp_path / "short", SHORT, show_progress=False)
    assert pipeline_fingerprint(pipe) == before and not getattr(pipe.transformer, "peft_config", None)
    assert {name: parameter.requires_grad for name, parameter in pipe.transformer.named_parameters()} == grads
    assert not pipe.transformer.training


def test_a_killed_run_resumes_to_the_same_adapter(tmp_path):
    reference = lora.train_lora(toy(), tmp_path / "reference", SHORT, show_progress=False)
    out, work = tmp_path / "resumed", tmp_path / "work"
    recipe = ", ".join(f"{name}={value!r}" for name, value in vars(SHORT).items())
    script = (f"from helpers import lora; from helpers.loading import load_pipeline; "
              f"lora.train_lora(load_pipeline('toy', machine=None), {str(out)!r}, lora.LoraRecipe({recipe}), "
              f"work={str(work)!r}, show_progress=False)")
    def part_way() -> bool:  # a checkpoint saved before the end (every 4 steps of 40)
        step = _step(work / "checkpoint.safetensors")
        return step is not None and step < SHORT.steps

    kill_part_way(script, part_way)
    assert not out.exists()
    lora.train_lora(toy(), out, SHORT, work=work, show_progress=False)
    first, second = load_file(reference / lora.WEIGHTS_NAME), load_file(out / lora.WEIGHTS_NAME)
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)
    assert json.loads((out / "lora.json").read_text())["steps"] == SHORT.steps


def _step(checkpoint: Path) -> int | None:
    from helpers.training import load_checkpoint

    try:
        saved = load_checkpoint(checkpoint)
    except ValueError:  # caught between two writes of a file the run replaces atomically: read it next time
        return None
    return None if saved is None else saved["progress"]["step"]


def test_a_lora_that_does_not_fit_is_named_before_loading(trained, tmp_path):
    pipe = toy()
    found = lora.check_lora(pipe, trained)
    targets = [name for name, _ in pipe.transformer.named_modules() if name.endswith(lora.TARGETS)]
    assert found.layers == {"transformer": len(targets)} and found.ranks == (lora.LoraRecipe().rank,)
    # An SDXL LoRA: diffusers would skip its keys without a word.
    sdxl = tmp_path / "sdxl"
    sdxl.mkdir()
    save_file({"unet.down_blocks.0.attentions.0.proj_in.lora.down.weight": torch.zeros(4, 320)},
              sdxl / lora.WEIGHTS_NAME)
    with pytest.raises(ValueError, match="not a LoRA for SD3"):
        lora.check_lora(pipe, sdxl)
    pipe.load_lora_weights(sdxl)  # what notebook 11 says diffusers does with it: nothing, and no error
    assert not getattr(pipe.transformer, "peft_config", None)
    # A LoRA for a wider transformer (as Large's is to Medium's).
    tensors = load_file(trained / lora.WEIGHTS_NAME)
    key = next(name for name in tensors if name.endswith("to_q.lora_A.weight"))
    wider = tmp_path / "wider"
    wider.mkdir()
    save_file({**tensors, key: torch.zeros(tensors[key].shape[0], tensors[key].shape[1] * 2)}, wider / lora.WEIGHTS_NAME)
    with pytest.raises(ValueError, match="another size of model"):
        lora.check_lora(pipe, wider)
    pickle = tmp_path / "model.bin"
    pickle.write_bytes(b"not read")
    with pytest.raises(ValueError, match="pickles"):
        lora.check_lora(pipe, pickle)


def test_bad_recipes_and_folders_are_refused_before_work(tmp_path):
    for bad in ({"rank": 0}, {"steps": -1}, {"prior_share": 1.5}, {"lr": 0}, {"concept": "circle"},
                {"weighting_scheme": "uniform"}, {"mode_scale": 1.8}, {"precondition_outputs": "yes"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            lora.LoraRecipe(**bad)
    with pytest.raises(ValueError, match="Add precondition_outputs=True"):
        lora.LoraRecipe(weighting_scheme="sigma_sqrt")
    mine = tmp_path / "holiday-photos"
    mine.mkdir()
    (mine / "beach.jpg").write_bytes(b"not ours")
    with pytest.raises(ValueError, match="not an adapter train_lora saved"):
        lora.train_lora(toy(), mine, SHORT, show_progress=False)
    assert (mine / "beach.jpg").read_bytes() == b"not ours"


def test_diffusers_weighting_schemes_give_the_losses_they_name():
    """sigma_sqrt on preconditioned outputs is the plain velocity loss at uniform noise levels, as diffusers' SD3
    scripts use it: its 1/sigma^2 cancels the sigma^2 between the clean-latent error and the velocity error."""
    from helpers.tiny import build_tiny_pipeline
    from helpers.training import flow_matching_loss

    pipe = build_tiny_pipeline()
    config = pipe.transformer.config
    latents = torch.randn(6, config.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    captions = ["a red circle"] * 6
    drop = torch.zeros(6, dtype=torch.bool)
    with torch.no_grad():
        def loss(**options) -> float:
            return float(flow_matching_loss(pipe, SHORT, 3, latents, captions, drop, **options))

        plain = loss(weighting_scheme="none")
        assert loss(weighting_scheme="sigma_sqrt", precondition_outputs=True) == pytest.approx(plain, rel=1e-5)
        assert loss(weighting_scheme="none", precondition_outputs=True) < plain  # sigma^2 < 1 for every picture
        assert loss(weighting_scheme="mode") != plain != loss()  # other noise levels


def test_the_committed_comparison_of_recipes_is_of_the_recipes_in_the_code():
    """Notebook 11 shows helpers/configs/lora-variants.json: each entry must be the recipe LoraRecipe makes now,
    judged seed by seed, or the table would show another recipe's numbers (remeasure: python -m helpers.lora
    variants --out FOLDER)."""
    from dataclasses import asdict

    results = json.loads(lora.VARIANTS_FILE.read_text())
    assert list(results) == list(lora.VARIANTS)
    for label, change in lora.VARIANTS.items():
        found = results[label]
        assert found["recipe"] == asdict(lora.LoraRecipe(**change)), label
        assert all(len(found[key]) == found["seeds"] == 64 and set(found[key]) <= {0, 1}
                   for key in ("rings_with", "rings_without", "old_followed_with", "old_followed_without"))
        # the base model is the same for every row: the judge's counts without the adapter agree
        assert found["rings_without"] == results[next(iter(lora.VARIANTS))]["rings_without"]
    rows = lora.variants_table()
    assert [row["recipe"] for row in rows] == list(lora.VARIANTS)
    assert rows[0]["rings"] == f"{sum(results[rows[0]['recipe']]['rings_with'])} of 64"


def test_the_command_line_refuses_bad_recipes_before_any_work(tmp_path, capsys):
    for argv, message in ((["measure", "--count", "0"], "count=0"),
                          (["train", "--weighting-scheme", "sigma_sqrt"], "Add precondition_outputs=True"),
                          (["train", "--precondition-outputs", "yes"], "'yes': use true or false"),
                          (["measure", "--rank", "0"], "rank=0")):
        with pytest.raises(SystemExit) as stopped:
            lora.main([*argv, "--out", str(tmp_path / "never")])
        assert stopped.value.code == 2 and message in capsys.readouterr().err, argv
    assert not (tmp_path / "never").exists()


def picture_folder(folder: Path, count: int = 4, size: int = 64) -> Path:
    """A reader's folder as check_training_folder expects it: pictures of rings with a caption file each."""
    folder.mkdir()
    for seed in range(count):
        scene = lora.concept_scene(seed)
        scene.draw().resize((size, size)).save(folder / f"ring-{seed}.png")
        (folder / f"ring-{seed}.txt").write_text(scene.caption + "\n", encoding="utf-8")
    return folder


def test_a_readers_own_folder_is_checked_then_trained_on(tmp_path):
    from dataclasses import replace

    folder = picture_folder(tmp_path / "my-rings", size=80)
    found = lora.check_training_folder(folder, 64)
    assert [path.name for path in found.files] == [f"ring-{seed}.png" for seed in range(4)]
    assert found.captions == tuple(lora.concept_scene(seed).caption for seed in range(4))
    assert found.arrays().shape == (4, 64, 64, 3)
    with pytest.raises(ValueError, match="prior_share"):  # the toy world's known scenes are no reader's class
        lora.train_lora(toy(), tmp_path / "refused", SHORT, pictures=found, show_progress=False)
    recipe = replace(SHORT, prior_share=0.0, steps=4)  # batch 4 from 4 pictures
    out = lora.train_lora(toy(), tmp_path / "my-lora", recipe, pictures=found, show_progress=False)
    assert json.loads((out / "lora.json").read_text())["pictures"] == found.listing()
    pipe = toy()
    pipe.load_lora_weights(out)
    assert pipe.transformer.peft_config
    (folder / "ring-0.txt").write_text("another caption", encoding="utf-8")  # the data changed under the checkpoint
    with pytest.raises(ValueError, match="other pictures"):
        lora.train_lora(toy(), tmp_path / "my-lora", recipe, pictures=lora.check_training_folder(folder, 64),
                        show_progress=False)
    one = lora.check_training_folder(folder, 64, caption="a photo of a sks ring")
    assert set(one.captions) == {"a photo of a sks ring"}


def test_a_folder_that_cannot_be_trained_on_names_every_problem_and_its_fix(tmp_path):
    folder = picture_folder(tmp_path / "mixed", count=3)
    (folder / "ring-0.txt").unlink()
    lora.concept_scene(5).draw().resize((32, 32)).save(folder / "tiny.png")
    (folder / "tiny.txt").write_text("a small ring", encoding="utf-8")
    (folder / "photo.HEIC").write_bytes(b"\x00" * 16)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / ".DS_Store").write_bytes(b"\x00")  # hidden files are not the reader's pictures: left alone
    with pytest.raises(ValueError) as refused:
        lora.check_training_folder(folder, 64)
    message = str(refused.value)
    for part in ("photo.HEIC", "convert them", "broken.jpg", "tiny.png (32x32)", "smaller size=",
                 "without a caption", "ring-0.png", "caption='"):
        assert part in message, part
    assert "ring-1.png" not in message
    with pytest.raises(ValueError, match=r"1 picture\(s\), fewer than the 3"):
        lora.check_training_folder(picture_folder(tmp_path / "one", count=1), 64)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        lora.check_training_folder(tmp_path / "nowhere", 64)
    with pytest.raises(ValueError, match="size=100 must be a positive multiple of 16"):
        lora.check_training_folder(folder, 100)
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        [".DS_Store", "broken.jpg", "photo.HEIC", "ring-0.png", "ring-1.png", "ring-1.txt", "ring-2.png", "ring-2.txt",
         "tiny.png", "tiny.txt"])


def test_the_training_memory_table_counts_what_the_architecture_keeps():
    from helpers import lora_memory
    from helpers.architecture import build_component

    committed = json.loads(lora_memory.ACTIVATIONS_FILE.read_text())
    for checkpointing, key in ((True, "checkpointed"), (False, "full")):  # the committed numbers are today's code's
        assert lora_memory.measure_activations("medium", 512, checkpointing=checkpointing) == committed["medium"][
            "512"][key]
    transformer = build_component("medium", "transformer", device="meta")
    layers = [module for name, module in transformer.named_modules()
              if name.endswith(lora.TARGETS) and isinstance(module, torch.nn.Linear)]
    assert committed["medium"]["512"]["full"]["adapter_values"] == sum(
        lora_memory.RANK * (layer.in_features + layer.out_features) for layer in layers)
    for model in ("large", "medium"):
        for size in lora_memory.SIZES:
            plain, checkpointed, qlora = (lora_memory.training_estimate(model, size, recipe)
                                          for recipe in ("lora", "lora-checkpointing", "qlora"))
            assert checkpointed.activations_gb < plain.activations_gb and qlora.weights_gb < checkpointed.weights_gb
            assert qlora.peak_gb < checkpointed.peak_gb < plain.peak_gb
    rows = lora_memory.training_table("large")
    assert len(rows) == len(lora_memory.RECIPES) * len(lora_memory.SIZES)
    assert [key for key in rows[0] if key.endswith("GB") and key != "estimated peak"] == [
        "T4 15.8 GB", "A10G 24 GB", "L4 24 GB", "A100 40 GB", "H100 80 GB"]
    with pytest.raises(ValueError, match="size=640"):
        lora_memory.training_estimate("large", 640)
    with pytest.raises(ValueError, match="recipe="):
        lora_memory.training_estimate("large", 1024, "dreambooth")


def test_the_sd35_recipe_trains_on_an_nf4_base_with_checkpointing_and_8bit_adam(tmp_path):
    """QLoRA as SD3.5 needs it on a 16-24 GB card, here on the toy: every linear layer of the transformer NF4
    (bitsandbytes' Linear4bit, the layers BitsAndBytesConfig makes on a GPU), gradient checkpointing, 8-bit AdamW.
    Checkpointing changes the memory a step needs, not what it computes; the adapter loads into a plain pipeline."""
    from dataclasses import replace

    from helpers.quantization import count_4bit_layers, quantize_linear_layers_nf4

    short = replace(SHORT, steps=4)
    kept = load_file(lora.train_lora(toy(), tmp_path / "kept", short, show_progress=False) / lora.WEIGHTS_NAME)
    checkpointed = replace(short, gradient_checkpointing=True)
    remade = load_file(lora.train_lora(toy(), tmp_path / "remade", checkpointed, show_progress=False)
                       / lora.WEIGHTS_NAME)
    assert kept.keys() == remade.keys()
    assert all(torch.allclose(kept[key], remade[key], atol=1e-6) for key in kept)
    pipe = toy()
    quantize_linear_layers_nf4(pipe.transformer, torch.float32)
    layers = count_4bit_layers(pipe.transformer)
    out = lora.train_lora(pipe, tmp_path / "qlora", replace(checkpointed, optimizer="adamw-8bit"),
                          show_progress=False)
    assert count_4bit_layers(pipe.transformer) == layers and not pipe.transformer.is_gradient_checkpointing
    losses = [loss for _, loss in json.loads((out / "lora.json").read_text())["loss_curve"]]
    assert losses and all(np.isfinite(losses))
    plain = toy()
    assert lora.check_lora(plain, out).layers == {"transformer": len(kept) // 2}
    plain.load_lora_weights(out)
    assert plain.transformer.peft_config


def test_the_training_step_gpu_check_measures_runs_each_recipe_and_leaves_the_transformer_as_it_was():
    """helpers.lora_memory.measure_training_step is what gpu_check times at full size against the memory table;
    here it runs each recipe's step on the toy (no CUDA: no peak), and a QLoRA step needs an NF4 transformer."""
    from helpers.lora_memory import measure_training_step
    from helpers.quantization import quantize_linear_layers_nf4

    pipe = toy()
    before = pipeline_fingerprint(pipe)
    with pytest.raises(ValueError, match="quantize it first"):
        measure_training_step(pipe, "qlora", 64)
    for recipe in ("lora", "lora-checkpointing"):
        found = measure_training_step(pipe, recipe, 64, steps=2)
        assert found["seconds_per_step"] > 0 and found["peak_gb"] is None and found["recipe"] == recipe
        assert pipeline_fingerprint(pipe) == before and not pipe.transformer.is_gradient_checkpointing
    quantize_linear_layers_nf4(pipe.transformer, torch.float32)
    assert measure_training_step(pipe, "qlora", 64, steps=2)["steps"] == 2
    with pytest.raises(ValueError, match="recipe"):
        measure_training_step(pipe, "full", 64)
