"""The picture each notebook opens with, drawn by this code: `python -m helpers.lead_pictures [01 02 ...]`.

Each is what its notebook teaches, seen on the offline toy model (on a CPU, about a minute for 01 to 10; 11's
trains a LoRA first, a few minutes) or computed from the full-size models' configs and the H100 measurements. They
are saved in `images/` with the command recorded in the PNG, and the command replaces only pictures it drew. The
README's table of notebooks shows them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

MAKER = "python -m helpers.lead_pictures"
"""Recorded in each PNG ('Software'), so the command replaces only pictures it drew."""
IMAGES = Path(__file__).resolve().parent.parent / "images"
TOY_PROMPT = "a yellow triangle on a blue background"


def _toy(quantize=None):
    from helpers.loading import load_pipeline

    pipe = load_pipeline("toy", quantize=quantize, machine=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pictures(pipe, seeds, **arguments):
    import torch

    from helpers.models import get_model

    settings = {**get_model("toy").recommended(), **arguments}
    return [pipe(generator=torch.Generator("cpu").manual_seed(seed), **settings).images[0] for seed in seeds]


def loading():
    from helpers.images import image_grid

    seeds = [0, 1, 2, 3]
    return image_grid(_pictures(_toy(), seeds, prompt=TOY_PROMPT), column_labels=[f"seed {s}" for s in seeds],
                      title=f"one prompt, four seeds: '{TOY_PROMPT}' (toy model)")


def memory():
    from helpers.memory import plot_strategies

    return plot_strategies("large")


def timing():
    from helpers.images import unshown_subplots
    from helpers.measured import measured_case

    rows = [("Medium", 4, ("medium", "bf16 on the GPU")), ("Large", 7, ("large", "bf16 on the GPU")),
            ("Large Turbo, 4 steps", None, ("large", "Turbo's settings")),
            ("Large, NF4, T5 dropped", None, ("large", "NF4 transformer, T5 dropped")),
            ("Large, NF4 + model offload", 18, ("large-nf4-model-offload", "model offload"))]
    cases = [measured_case(*where) for _, _, where in rows]
    figure, axis = unshown_subplots(figsize=(7, 3))
    positions = range(len(rows))
    axis.barh([p + 0.2 for p in positions], [case.seconds for case in cases], height=0.4, label="measured")
    axis.barh([p - 0.2 for p in positions], [seed or 0 for _, seed, _ in rows], height=0.4, label="the toolkit says")
    for position, case in zip(positions, cases, strict=True):
        axis.text(case.seconds + 0.2, position + 0.2, f"{case.seconds:.2f} s", va="center", fontsize=8)
    axis.set_yticks(list(positions), [label for label, _, _ in rows])
    axis.invert_yaxis()
    axis.set_xlabel("seconds per 1024x1024 image")
    axis.set_title(f"SD3.5 on an {cases[0].gpu}, measured {cases[0].date}")
    axis.set_xlim(0, max(case.seconds for case in cases) * 1.15)
    axis.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    return figure


def negative_prompting():
    from helpers.images import image_grid

    pipe, seeds = _toy(), [0, 1, 2, 3, 4]
    rows = [_pictures(pipe, seeds, prompt="a red circle", negative_prompt=negative)
            for negative in ("", "a blue background")]
    return image_grid(rows, row_labels=["no negative", "negative:\na blue\nbackground"],
                      column_labels=[f"seed {s}" for s in seeds], title="'a red circle', with and without a negative")


def guidance():
    from helpers.images import image_grid

    pipe, scales, seeds = _toy(), [1.0, 2.5, 4.5, 7.5, 10.0], [0, 1]
    rows = [[_pictures(pipe, [seed], prompt=TOY_PROMPT, guidance_scale=scale)[0] for scale in scales]
            for seed in seeds]
    return image_grid(rows, row_labels=[f"seed {s}" for s in seeds], column_labels=[f"guidance {g}" for g in scales],
                      title=f"'{TOY_PROMPT}' at five guidance scales (toy model)")


def _scene():
    from helpers.world import Scene

    return Scene("circle", "red", "blue", centre=(0.5, 0.5), extent=0.55).draw()


def image_to_image():
    from helpers.images import image_grid
    from helpers.loading import load_pipeline

    pipe = load_pipeline("toy", task="image-to-image", machine=None)
    pipe.set_progress_bar_config(disable=True)
    scene, strengths = _scene(), [0.05, 0.1, 0.2, 0.4, 1.0]
    prompt = "a yellow triangle on a green background"
    made = [_pictures(pipe, [0], prompt=prompt, image=scene, strength=s)[0] for s in strengths]
    return image_grid([scene, *made], column_labels=["input", *(f"strength {s}" for s in strengths)],
                      title=f"the input, towards '{prompt}' (toy model)")


def inpainting():
    from helpers.images import image_grid
    from helpers.inputs import prepare_mask, rectangle_mask
    from helpers.loading import load_pipeline
    from helpers.world import Scene

    pipe = load_pipeline("toy", task="inpainting", machine=None)
    pipe.set_progress_bar_config(disable=True)
    scene = Scene("square", "white", "blue", centre=(0.36, 0.6), extent=0.45)
    image = scene.draw()
    mask = prepare_mask(rectangle_mask(image.size, scene.box), image.size, grow=2).image
    made = _pictures(pipe, [0, 1, 2], prompt="a yellow square on a blue background", image=image, mask_image=mask,
                     strength=1.0)
    return image_grid([image, mask, *made], column_labels=["image", "mask (white: paint)", "seed 0", "seed 1",
                                                            "seed 2"],
                      title="'a yellow square on a blue background', inside the mask only (toy model)")


def inside_the_pipeline():
    from helpers.encoders import quiet_truncation_warnings
    from helpers.images import image_grid

    pipe, prompts = _toy(), ["a red circle on a blue background", "a white square on a black background",
                             "a green triangle on a yellow background"]
    preamble = "a photo, highly detailed, sharp focus, award winning, "
    with quiet_truncation_warnings():
        short = [_pictures(pipe, [i], prompt=p, max_sequence_length=48)[0] for i, p in enumerate(prompts)]
        long = [_pictures(pipe, [i], prompt=preamble + p, max_sequence_length=48)[0] for i, p in enumerate(prompts)]
    return image_grid([short, long], row_labels=["the prompt", "a preamble\nfirst"], column_labels=prompts,
                      title="CLIP reads 16 tokens on the toy: a preamble pushes the subject out")


def training():
    import json

    from helpers.images import unshown_subplots
    from helpers.loading import toy_model_dir

    record = json.loads((toy_model_dir() / "training.json").read_text())
    figure, (vae, transformer) = unshown_subplots(1, 2, figsize=(8, 2.8))
    for axis, key, steps, title in ((vae, "vae_loss_curve", record["vae_steps"], "VAE"),
                                    (transformer, "loss_curve", record["steps"], "transformer (flow matching)")):
        curve = record[key]
        axis.plot([steps * (i + 1) / len(curve) for i in range(len(curve))], curve)
        axis.set_title(f"{title} loss")
        axis.set_xlabel("training step")
    figure.suptitle(f"the toy model's training: {record['training_seconds'] / 60:.0f} minutes on {record['machine']}",
                    fontsize=9)
    figure.tight_layout()
    return figure


def many_gpus():
    from helpers.images import image_grid

    seeds = list(range(8))
    pictures = _pictures(_toy(), seeds, prompt=TOY_PROMPT)
    # split_between_processes gives each process a contiguous share: seeds 0-3 and 4-7
    return image_grid([pictures[:4], pictures[4:]], row_labels=["process 0:\nseeds 0-3", "process 1:\nseeds 4-7"],
                      title="how split_between_processes shares eight seeds between two GPUs (toy model)")


def lora():
    import tempfile

    from helpers.images import image_grid
    from helpers.lora import LoraRecipe, concept_scene, train_lora

    pipe, seeds = _toy(), [0, 1, 2, 3, 4]
    prompts = [concept_scene(seed).caption for seed in seeds]

    def row():
        return [_pictures(pipe, [seed], prompt=prompt)[0] for seed, prompt in zip(seeds, prompts, strict=True)]

    before = row()
    with tempfile.TemporaryDirectory() as scratch:  # the recipe notebook 11 trains: about three minutes
        folder = train_lora(pipe, Path(scratch) / "ring", LoraRecipe(), show_progress=False)
        pipe.load_lora_weights(folder, adapter_name="ring")
        after = row()
        pipe.unload_lora_weights()
    return image_grid([before, after], row_labels=["toy model", "with the LoRA"], column_labels=prompts,
                      title="a shape the toy never saw, taught by a LoRA")


PICTURES: dict[str, tuple[str, Callable]] = {
    "01": ("01-first-images.png", loading),
    "02": ("02-what-fits.png", memory),
    "03": ("03-h100-times.png", timing),
    "04": ("04-negative-prompt.png", negative_prompting),
    "05": ("05-guidance.png", guidance),
    "06": ("06-strength.png", image_to_image),
    "07": ("07-inpainting.png", inpainting),
    "08": ("08-long-prompt.png", inside_the_pipeline),
    "09": ("09-training.png", training),
    "10": ("10-two-processes.png", many_gpus),
    "11": ("11-lora.png", lora),
}
"""Notebook number -> (file in images/, the function that draws it)."""


def is_ours(path: Path) -> bool:
    from helpers.images import drawn_by

    return drawn_by(path, MAKER)


def main(argv: list[str] | None = None) -> None:
    """Draw the notebooks' opening pictures into images/ (all, or the notebooks named)."""
    from helpers.checks import check_output_file
    from helpers.images import save_figure

    parser = argparse.ArgumentParser(prog=MAKER, description=main.__doc__)
    parser.add_argument("notebooks", nargs="*", metavar="NN",
                        help=f"notebook numbers ({', '.join(PICTURES)}); all by default")
    args = parser.parse_args(argv)
    for number in args.notebooks:
        if number not in PICTURES:
            parser.error(f"notebook {number!r} has no picture: use notebook numbers {', '.join(PICTURES)}.")
    chosen = args.notebooks or list(PICTURES)
    paths = {}
    for number in chosen:
        try:
            paths[number] = check_output_file(IMAGES / PICTURES[number][0], "picture", ours=is_ours)
        except ValueError as error:
            parser.error(str(error))
    for number in chosen:
        save_figure(PICTURES[number][1](), paths[number], MAKER, dpi=110)
        print(f"notebook {number}: saved {paths[number]}")
        notebook = attach(number, paths[number])
        if notebook:
            print(f"notebook {number}: attached to {notebook.name}'s first cell")


def attach(number: str, picture: Path) -> Path | None:
    """Put `picture` into notebook `number`'s first cell as its attachment (the notebook then shows it when opened
    alone, as Colab opens it); None where no notebook of that number is beside images/ (an installed package)."""
    import base64
    import json

    found = sorted((IMAGES.parent / "notebooks").glob(f"{number}_*.ipynb"))
    if len(found) != 1:
        return None
    notebook = json.loads(found[0].read_text(encoding="utf-8"))
    cell = notebook["cells"][0]
    cell.setdefault("attachments", {})[picture.name] = {"image/png": base64.b64encode(picture.read_bytes()).decode()}
    found[0].write_text(json.dumps(notebook, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return found[0]


if __name__ == "__main__":
    main()
