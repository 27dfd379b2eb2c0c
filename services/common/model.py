"""The model lifecycle every service implements: load, warm up, then predict on named tensors.

A `Model` is what the open inference protocol (KServe v2) exposes by name; typed RPCs call the
same `predict`, so both paths return the same bytes.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from genaug.deadline import Deadline
from genaug.errors import InvalidArgument
from genaug.wire import NUMPY_BY_KSERVE

BYTES = "BYTES"


@dataclass(frozen=True)
class TensorSpec:
    """Name, KServe v2 datatype and shape of one model input or output; -1 is any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    # Alternative datatypes this input also accepts (e.g. UINT8 or FP32 frames).
    also_accepts: tuple[str, ...] = ()
    # An input the caller may leave out (the model says what it needs instead).
    optional: bool = False

    def accepts(self, datatype: str) -> bool:
        return datatype == self.datatype or datatype in self.also_accepts

    def validate(self, array: np.ndarray, datatype: str, field: str) -> None:
        if not self.accepts(datatype):
            allowed = " or ".join((self.datatype, *self.also_accepts))
            raise InvalidArgument(f"{field}.datatype", f"is {datatype}, expected {allowed}")
        if len(array.shape) != len(self.shape):
            raise InvalidArgument(
                f"{field}.shape",
                f"has {len(array.shape)} dimensions {list(array.shape)}, expected "
                f"{len(self.shape)} {list(self.shape)}",
            )
        for axis, (got, want) in enumerate(zip(array.shape, self.shape, strict=True)):
            if want != -1 and got != want:
                raise InvalidArgument(
                    f"{field}.shape",
                    f"dimension {axis} is {got}, expected {want} in {list(self.shape)}",
                )


def numpy_for_kserve(datatype: str, field: str) -> np.dtype:
    try:
        return NUMPY_BY_KSERVE[datatype]
    except KeyError:
        raise InvalidArgument(field, f"unsupported datatype {datatype!r}") from None


class Model(abc.ABC):
    """Base of every served model.

    Subclasses set `name`, `inputs` and `outputs`, and implement `load` and `predict`.
    `predict` receives validated inputs and must check `deadline` between units of work.
    """

    name: str = ""
    version: str = "1"
    platform: str = "pytorch_libtorch"
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()

    def __init__(self) -> None:
        self.ready = False

    @abc.abstractmethod
    def load(self) -> None:
        """Load weights; may be called more than once and must then do nothing."""

    def warmup(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Run a small request so the first real one does not pay one-off costs."""

    @abc.abstractmethod
    def predict(self, inputs: dict[str, np.ndarray], deadline: Deadline) -> dict[str, np.ndarray]:
        """Compute the outputs from validated inputs."""

    def parameters(self) -> dict[str, str]:
        """Extra facts reported in metadata (weights provenance, config name, device)."""
        return {}

    def validate_inputs(self, inputs: dict[str, tuple[np.ndarray, str]], prefix: str = "inputs"):
        """Check names, datatypes and shapes; returns name -> array."""
        specs = {spec.name: spec for spec in self.inputs}
        unknown = sorted(set(inputs) - set(specs))
        if unknown:
            raise InvalidArgument(
                f"{prefix}[{unknown[0]}]",
                f"unknown input; model {self.name!r} takes {sorted(specs)}",
            )
        arrays = {}
        for name, spec in specs.items():
            if name not in inputs:
                if spec.optional:
                    continue
                raise InvalidArgument(f"{prefix}[{name}]", "missing required input")
            array, datatype = inputs[name]
            spec.validate(array, datatype, f"{prefix}[{name}]")
            arrays[name] = array
        return arrays
