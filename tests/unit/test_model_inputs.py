"""A model's declared inputs: required ones must come, optional ones may be left out."""

from __future__ import annotations

import numpy as np
import pytest

from genaug.errors import InvalidArgument
from services.common.model import Model, TensorSpec


class _TwoInputs(Model):
    name = "two"
    inputs = (
        TensorSpec("frames", "FP32", (-1, 4)),
        TensorSpec("hint", "BYTES", (1,), optional=True),
    )

    def load(self) -> None:
        pass

    def predict(self, inputs, deadline):
        return inputs


FRAMES = (np.zeros((2, 4), np.float32), "FP32")


def test_an_optional_input_may_be_left_out_and_is_checked_when_sent():
    model = _TwoInputs()
    assert set(model.validate_inputs({"frames": FRAMES})) == {"frames"}
    hint = np.array([b"x"], dtype=object)
    assert set(model.validate_inputs({"frames": FRAMES, "hint": (hint, "BYTES")})) == {
        "frames",
        "hint",
    }
    with pytest.raises(InvalidArgument, match=r"inputs\[hint\]\.shape"):
        model.validate_inputs({"frames": FRAMES, "hint": (np.array([b"x", b"y"], object), "BYTES")})


def test_a_required_input_left_out_is_named():
    with pytest.raises(InvalidArgument, match=r"inputs\[frames\]: missing required input"):
        _TwoInputs().validate_inputs({"hint": (np.array([b"x"], dtype=object), "BYTES")})
