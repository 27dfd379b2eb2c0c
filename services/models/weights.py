"""Safe weight loading: `torch.load(weights_only=True)` and strict, clearly reported key checks.

Every network in this package loads weights through these helpers, so a wrong or truncated
checkpoint fails at load time with the offending key named, never later with a shape error deep
inside a forward pass.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Containers some training scripts wrap the state dict in (`{"model": sd}`, `{"state_dict": sd}`).
_WRAPPER_KEYS = ("model", "state_dict")
# How many offending keys an error message lists before it abbreviates.
_MAX_LISTED = 10


class CheckpointError(ValueError):
    """A checkpoint does not match the network it is loaded into (missing, extra or mis-shaped)."""


def read_torch_state_dict(path: str | Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Reads a `.pth` state dict safely and optionally keeps only the keys under a prefix.

    Args:
        path: File written by `torch.save` holding a state dict (possibly wrapped in
            `{"model": ...}` or `{"state_dict": ...}`).
        prefix: When not empty, keep only keys starting with it and strip it
            (e.g. `"image_encoder."`).

    Returns:
        The (filtered) state dict, tensors on the CPU.

    Raises:
        FileNotFoundError: The file does not exist.
        CheckpointError: The file holds no state dict or nothing under `prefix`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in _WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointError(f"{path}: no keys start with {prefix!r}")
    return state


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f", ... ({more} more)" if more > 0 else "")


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Checks that `state` has exactly the module's keys with the module's shapes.

    Args:
        module: The network the state dict is meant for.
        state: The state dict to check.
        source: Where the state dict came from, for the error message (a path, usually).

    Raises:
        CheckpointError: Naming every missing, unexpected and mis-shaped key (first ten of each).
    """
    expected = module.state_dict()
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {_listed(mismatched)}")
    if problems:
        raise CheckpointError(
            f"{source} does not match {type(module).__name__}: " + "; ".join(problems)
        )


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Checks `state` (see `check_state_dict`) and loads it with `strict=True`.

    Args:
        module: The network to load into.
        state: Its state dict.
        source: Where the state dict came from, for messages.

    Raises:
        CheckpointError: The state dict does not match the module.
    """
    check_state_dict(module, state, source)
    module.load_state_dict(state, strict=True)
    logger.debug("loaded %d tensors from %s into %s", len(state), source, type(module).__name__)
