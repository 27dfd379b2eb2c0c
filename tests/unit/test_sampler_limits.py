"""The sampler's step limit fits every solver's schedule."""

from __future__ import annotations

import pytest

from services.models.ldm.pipeline import SOLVERS, make_scheduler
from services.sampler.limits import RequestLimits


@pytest.mark.parametrize("solver", SOLVERS)
def test_the_most_steps_allowed_stay_inside_the_training_schedule(solver):
    scheduler = make_scheduler(solver)
    scheduler.set_timesteps(RequestLimits().max_steps)
    assert int(scheduler.timesteps.min()) >= 0
    assert int(scheduler.timesteps.max()) < scheduler.config.num_train_timesteps
