"""Sampling settings a generator was measured with: its model repository's `sampling.json`.

`genaug augment` and `genaug demo` default their steps, guidance and solver to the settings
the generator's quality figures were measured with (written next to the weights), instead of
generic values: the bundled model's figures hold at 25 DDIM steps and guidance 3, not at 50 and
7.5. The repository is `$GENAUG_MODEL_DIR` (as the services read it), else the bundled one; the
file is that of the generator the job names (`--model`), else of the repository's default.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from genaug.errors import GenaugError
from services.models.generators import generator_dir

BUNDLED_MODEL_DIR = Path(__file__).resolve().parents[2] / "deploy" / "model-repository"
FALLBACK_STEPS = 25
FALLBACK_GUIDANCE = 3.0
FALLBACK_SOLVER = "ddim"


@dataclass(frozen=True)
class SamplingDefaults:
    steps: int
    guidance: float
    solver: str
    source: str  # the file they came from, or why they are the fallback


def model_dir(env: dict[str, str] | None = None) -> Path:
    """The generator's model repository: `$GENAUG_MODEL_DIR`, else the bundled one."""
    env = os.environ if env is None else env
    return Path(env["GENAUG_MODEL_DIR"]) if env.get("GENAUG_MODEL_DIR") else BUNDLED_MODEL_DIR


def sampling_defaults(directory: Path | None = None, model: str = "") -> SamplingDefaults:
    """The `sampling.json` of generator `model` ("" = the default) of the repository, else 25
    DDIM steps at guidance 3 (also when the repository is not readable from here: the
    services run elsewhere).

    Raises:
        ValueError: the file exists but is not a JSON object with numeric steps and guidance.
    """
    try:
        path = generator_dir(directory or model_dir(), model) / "sampling.json"
    except GenaugError:
        path = None
    if path is None or not path.is_file():
        return SamplingDefaults(
            FALLBACK_STEPS, FALLBACK_GUIDANCE, FALLBACK_SOLVER, "defaults (no sampling.json)"
        )
    try:
        settings = json.loads(path.read_text())
        return SamplingDefaults(
            int(settings["steps"]),
            float(settings["guidance"]),
            str(settings.get("solver") or FALLBACK_SOLVER),
            str(path),
        )
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a sampling settings file ({error})") from None


def fill_sampling_defaults(options) -> None:
    """Set `steps`, `guidance` and `solver` that were not given (None) from the defaults."""
    if options.steps is None or options.guidance is None or options.solver is None:
        defaults = sampling_defaults(model=getattr(options, "model", None) or "")
        options.steps = defaults.steps if options.steps is None else options.steps
        options.guidance = defaults.guidance if options.guidance is None else options.guidance
        options.solver = defaults.solver if options.solver is None else options.solver
