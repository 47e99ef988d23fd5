"""The released models that ship in btbnet/weights/: every one loads by name and predicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from btbnet.data import load_rgb
from btbnet.predict import predict_map
from btbnet.pretrained import DEFAULT, MODELS, load_pretrained, released, weights_path

REPO_DATA = Path(__file__).resolve().parents[1] / "data" / "embedded" / "defocus" / "test"


def test_the_default_model_is_released():
    assert DEFAULT in MODELS


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_released_model_loads_and_maps_a_photo_at_its_scale(name):
    entry = released(name)
    assert weights_path(name).stat().st_size <= 25 * 2**20  # the release budget: 25 MB
    model = load_pretrained(name)
    assert not model.training
    image = load_rgb(sorted((REPO_DATA / "image").iterdir())[0])
    focus = predict_map(model, image, max_size=entry.max_size)
    assert focus.shape == image.shape[:2] and focus.dtype == np.uint8
    assert focus.min() < focus.max()  # not a constant map


def test_unknown_names_are_listed():
    with pytest.raises(ValueError, match=rf"nope: no released model of that name \(released: .*{DEFAULT}"):
        load_pretrained("nope")
