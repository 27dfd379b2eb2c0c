"""`genaug train all --budget-minutes B`: the recipe scaled to the time available.

The bundled recipe's stage wall times at scale 1 were measured on this 2-core CPU on clips of
8 x 64 x 64 (MODEL_CARD.md, "Training"); a step's cost grows with a clip's pixels. What the
conditions step took is measured, not guessed (it runs first); the minutes left are shared among
the stages in the recipe's proportions. Each stage gets its share as `--max-minutes` too, so the
wall stays within the budget even where the estimate is off (a stage stops cleanly at its cap,
keeping what it learnt), and the card records the steps that actually ran.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from genaug.errors import InvalidArgument

# Wall minutes of each stage of the recipe at scale 1 (MODEL_CARD.md, 1 thread, 2 cores).
STAGE_MINUTES = {"vae": 16.3, "classifier": 1.8, "ldm": 10.0, "seq": 37.9}
MEASURED_PIXELS = 8 * 64 * 64  # frames x height x width of the clips they were measured on
MIN_TRAINING_MINUTES = 1.0


@dataclass(frozen=True)
class BudgetPlan:
    budget_minutes: float
    conditions_minutes: float  # measured
    recipe_scale: float  # of every step count (at most the requested scale)
    stage_minutes: dict[str, float]  # each stage's cap (`max_minutes`)
    estimated_minutes: float  # the stages' estimate at that scale

    def to_dict(self) -> dict:
        return asdict(self)


def plan_budget(
    budget_minutes: float,
    conditions_minutes: float,
    clip_shape: tuple[int, int, int],
    requested_scale: float = 1.0,
) -> BudgetPlan:
    """The scale and stage caps that fit the minutes left after the conditions.

    Raises:
        InvalidArgument: fewer than a minute is left for training.
    """
    left = budget_minutes - conditions_minutes
    if left < MIN_TRAINING_MINUTES:
        raise InvalidArgument(
            "budget_minutes",
            f"{budget_minutes:g} leaves {left:.1f} min for training after the conditions "
            f"({conditions_minutes:.1f} min); give at least {MIN_TRAINING_MINUTES:g} more",
        )
    frames, height, width = clip_shape
    size = frames * height * width / MEASURED_PIXELS
    full = sum(STAGE_MINUTES.values()) * size  # the whole recipe at scale 1 on these clips
    scale = min(requested_scale, left / full)
    total = sum(STAGE_MINUTES.values())
    caps = {stage: round(left * m / total, 2) for stage, m in STAGE_MINUTES.items()}
    return BudgetPlan(
        budget_minutes, round(conditions_minutes, 2), round(scale, 5), caps, round(full * scale, 1)
    )
