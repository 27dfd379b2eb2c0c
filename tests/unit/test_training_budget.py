"""`--budget-minutes`: the recipe scaled to the minutes left after the conditions, each stage
capped at its share."""

from __future__ import annotations

import pytest

from genaug.errors import InvalidArgument
from services.models.training.budget import STAGE_MINUTES, plan_budget


def test_the_full_recipe_fits_a_generous_budget_on_the_bundled_clip_size():
    plan = plan_budget(120, 11.0, (8, 64, 64))
    assert plan.recipe_scale == 1.0  # never more than the recipe
    assert plan.estimated_minutes == pytest.approx(sum(STAGE_MINUTES.values()), abs=0.1)
    assert sum(plan.stage_minutes.values()) == pytest.approx(109, abs=0.05)


def test_a_short_budget_scales_the_steps_and_caps_every_stage():
    plan = plan_budget(10, 5.0, (8, 64, 64))
    assert plan.recipe_scale == pytest.approx(5 / sum(STAGE_MINUTES.values()), rel=1e-3)
    assert sum(plan.stage_minutes.values()) == pytest.approx(5, abs=0.05)
    assert plan.stage_minutes["seq"] > plan.stage_minutes["vae"] > plan.stage_minutes["classifier"]
    # Smaller clips cost less per step: the same minutes buy more of the recipe.
    assert plan_budget(10, 5.0, (8, 32, 32)).recipe_scale == pytest.approx(
        4 * plan.recipe_scale, rel=1e-3
    )
    assert plan_budget(10, 5.0, (8, 32, 32), requested_scale=0.01).recipe_scale == 0.01


def test_a_budget_the_conditions_use_up_is_refused_naming_it():
    with pytest.raises(InvalidArgument, match="budget_minutes: 5 leaves 0.5 min for training"):
        plan_budget(5, 4.5, (8, 64, 64))
