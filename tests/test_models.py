"""The model registry and the SD35_MODEL setting."""

import pytest

from helpers.models import MODEL_VARIABLE, MODELS, UnknownModelError, get_model, model_setting


def test_registry_holds_the_three_models_and_the_stand_in():
    assert set(MODELS) == {"large", "large-turbo", "medium", "toy", "tiny"}
    assert MODELS["large"].hub_id == "stabilityai/stable-diffusion-3.5-large"
    assert MODELS["large-turbo"].hub_id == "stabilityai/stable-diffusion-3.5-large-turbo"
    assert MODELS["medium"].hub_id == "stabilityai/stable-diffusion-3.5-medium"
    assert MODELS["tiny"].is_stand_in and MODELS["tiny"].hub_id is None


@pytest.mark.parametrize(
    ("name", "steps", "guidance"),
    [("large", 40, 4.5), ("large-turbo", 4, 0.0), ("medium", 50, 5.0)],
)
def test_recommended_settings_are_stabilitys_reference_settings(name, steps, guidance):
    settings = MODELS[name].recommended()
    assert settings == {"num_inference_steps": steps, "guidance_scale": guidance, "height": 1024, "width": 1024}


def test_turbo_runs_without_classifier_free_guidance():
    # diffusers only runs CFG (and so only uses a negative prompt) when guidance_scale > 1.
    assert MODELS["large-turbo"].recommended()["guidance_scale"] <= 1


def test_medium_skip_layer_guidance_settings():
    settings = MODELS["medium"].recommended(skip_layer_guidance=True)
    assert settings["guidance_scale"] == 4.0
    assert settings["skip_guidance_layers"] == [7, 8, 9]
    assert settings["skip_layer_guidance_scale"] == 2.5
    assert (settings["skip_layer_guidance_start"], settings["skip_layer_guidance_stop"]) == (0.01, 0.20)


def test_skip_layer_guidance_is_refused_for_large():
    with pytest.raises(ValueError, match="SLG is an SD3.5 Medium setting"):
        MODELS["large"].recommended(skip_layer_guidance=True)


def test_sizes_are_multiples_of_16():
    for spec in MODELS.values():
        assert spec.height % 16 == 0 and spec.width % 16 == 0


def test_get_model_accepts_names_case_insensitively():
    assert get_model(" Large ") is MODELS["large"]
    assert get_model(MODELS["medium"]) is MODELS["medium"]


@pytest.mark.parametrize("bad", ["sd3", "large_turbo", "", 3])
def test_unknown_model_names_the_value_and_the_choices(bad):
    with pytest.raises(UnknownModelError) as error:
        get_model(bad)
    assert repr(bad) in str(error.value)
    assert "large-turbo" in str(error.value)


def test_model_setting_defaults_to_auto():
    assert model_setting({}) == "auto"
    assert model_setting({MODEL_VARIABLE: "  "}) == "auto"
    assert model_setting({MODEL_VARIABLE: "Medium"}) == "medium"


def test_bad_model_setting_names_the_variable_value_and_fix():
    with pytest.raises(UnknownModelError) as error:
        model_setting({MODEL_VARIABLE: "sd35-large"})
    message = str(error.value)
    assert "SD35_MODEL='sd35-large'" in message
    assert "export SD35_MODEL=medium" in message


def test_the_toy_model_runs_at_the_size_and_prompt_length_it_was_trained_at():
    from helpers import training, world

    settings = MODELS["toy"].recommended()
    assert settings["max_sequence_length"] == training.T5_MAX_LENGTH
    assert settings["height"] == settings["width"] == world.SIZE
    assert MODELS["toy"].is_toy and MODELS["toy"].is_stand_in and not MODELS["tiny"].is_toy
