import pytest
import torch

from learners.unet import PAPER_PARAMS, PRESETS, UNetConfig, build_unet, count_parameters, preset_config


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_presets_match_paper_parameter_counts(name):
    n = count_parameters(build_unet(name))
    assert abs(n - PAPER_PARAMS[name]) / PAPER_PARAMS[name] < 0.01


def test_sizes_ordered_and_any_number_of_classes():
    counts = [count_parameters(build_unet(n)) for n in ("tiny", "medium", "wide", "large")]
    assert counts == sorted(counts) and len(set(counts)) == 4 and list(PRESETS) == ["tiny", "medium", "wide", "large"]
    model = build_unet(preset_config("tiny", n_classes=5))
    assert model(torch.zeros(2, 1, 40, 40)).shape == (2, 5, 40, 40)


@pytest.mark.parametrize("shape", [(37, 53), (16, 16), (101, 64)])
def test_any_image_size_keeps_shape(shape):
    model = build_unet(UNetConfig(base=4, depth=3))
    assert model(torch.zeros(1, 1, *shape)).shape == (1, 3, *shape)


def test_bad_config_rejected():
    with pytest.raises(ValueError):
        UNetConfig(n_classes=1)
    with pytest.raises(ValueError):
        UNetConfig(dropout=1.0)
    with pytest.raises(ValueError, match="unknown model preset"):
        preset_config("huge")


def test_preset_of_names_the_preset_for_any_class_count_and_custom_otherwise():
    from learners.unet import preset_of

    assert [preset_of(preset_config(n, n_classes=5)) for n in PRESETS] == list(PRESETS)
    assert preset_of(UNetConfig(base=6, depth=2)) == "custom"
    assert preset_of(preset_config("wide", dropout=0.0)) == "custom"
