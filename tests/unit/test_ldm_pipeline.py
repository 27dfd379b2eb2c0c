"""Sequence LDM sampler: CFG, determinism, step batching, solvers."""

from __future__ import annotations

import functools

import pytest
import torch

from services.models.ldm import (
    SamplingRequest,
    SequenceSampler,
    SequenceUNet,
    identity_trajectories,
    make_scheduler,
)
from tests.unit.test_ldm_model import TINY as TINY_CONFIG

H = W = 4
F = 4
EMPTY_TEXT = torch.linspace(-1, 1, 5 * 12).reshape(5, 12)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.cache
def unet() -> SequenceUNet:
    torch.manual_seed(0)
    model = SequenceUNet(**TINY_CONFIG)  # the model tests' tiny configuration
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # wake the zero-initialised layers up
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def sampler(**kw) -> SequenceSampler:
    return SequenceSampler(unet(), empty_text_embedding=EMPTY_TEXT, **kw)


def request(seed=0, **kw) -> SamplingRequest:
    gen = torch.Generator().manual_seed(100 + seed)
    base = dict(
        num_frames=F,
        class_label=seed % 3,
        seed=seed,
        num_inference_steps=3,
        guidance_scale=3.0,
        text_embedding=torch.randn(5, 12, generator=gen),
        image_prior=torch.randn(8, 8, 8, generator=gen),
        motion_field=torch.randn(F - 1, 2, 2 * H, 2 * W, generator=gen),
    )
    return SamplingRequest(**{**base, **kw})


def reference_sample(req: SamplingRequest) -> torch.Tensor:
    """Straightforward CFG loop on the raw model inputs, one forward per branch."""
    model = unet()
    sched = make_scheduler(req.solver)
    sched.set_timesteps(req.num_inference_steps)
    gen = torch.Generator().manual_seed(req.seed)
    x = torch.randn(1, 4, req.num_frames, H, W, generator=gen) * sched.init_noise_sigma
    cond = dict(
        class_labels=torch.tensor([req.class_label]),
        encoder_hidden_states=req.text_embedding[None],
        image_prior=req.image_prior[None],
        motion_field=req.motion_field.permute(1, 0, 2, 3)[None],
    )
    uncond = dict(cond, encoder_hidden_states=EMPTY_TEXT[None], image_prior=None, motion_field=None)
    with torch.no_grad():
        for t in sched.timesteps:
            eps = model(x, t, **cond)
            if req.guidance_scale != 1:
                eps_u = model(x, t, **uncond)
                eps = eps_u + req.guidance_scale * (eps - eps_u)
            x = sched.step(eps, t, x).prev_sample
    return x[0]


def test_guidance_scale_one_equals_the_conditional_branch():
    req = request(guidance_scale=1.0)
    (out,) = sampler().generate([req])
    torch.testing.assert_close(out, reference_sample(req), atol=1e-5, rtol=1e-5)


def test_guided_sampling_matches_a_two_pass_reference():
    req = request(seed=1, guidance_scale=4.0)
    (out,) = sampler().generate([req])
    # Batched cond+uncond forward vs two forwards: fp32 rounding only.
    torch.testing.assert_close(out, reference_sample(req), atol=1e-4, rtol=1e-4)
    (plain,) = sampler().generate([request(seed=1, guidance_scale=1.0)])
    assert (out - plain).abs().max() > 1e-3


def test_same_seed_gives_identical_clips():
    a = sampler().generate([request(seed=5)])[0]
    b = sampler().generate([request(seed=5)])[0]
    c = sampler().generate([request(seed=6, class_label=5 % 3)])[0]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_batching_requests_in_one_step_equals_running_them_alone():
    reqs = [
        request(seed=0, guidance_scale=3.0, num_inference_steps=3),
        request(seed=1, guidance_scale=1.0, num_inference_steps=4, solver="dpmsolver++"),
        request(seed=2, guidance_scale=7.5, num_inference_steps=2, text_embedding=None),
    ]
    calls: list[int] = []
    s = sampler()
    original = s.unet.forward
    s.unet.forward = lambda *a, **k: calls.append(a[0].shape[0]) or original(*a, **k)
    try:
        together = s.generate(reqs)
    finally:
        del s.unet.forward
    assert calls[0] == 2 + 1 + 2  # one forward, every CFG row of every request
    assert len(calls) == 4  # the longest request's step count
    for req, out in zip(reqs, together, strict=True):
        (alone,) = sampler().generate([req])
        # Different GEMM batch sizes round differently; CFG x7.5 amplifies that to ~1e-5.
        torch.testing.assert_close(out, alone, atol=1e-4, rtol=1e-4)


def test_step_api_joins_a_request_mid_flight_and_reports_progress():
    s = sampler()
    seen: list[tuple[int, int]] = []
    first = s.prepare(request(seed=3, callback=lambda i, n, x: seen.append((i, n))))
    s.step([first])
    second = s.prepare(request(seed=4, num_inference_steps=2))
    s.step([first, second])
    s.step([first, second])
    assert first.done and second.done
    assert seen == [(1, 3), (2, 3), (3, 3)]
    with pytest.raises(ValueError):
        s.finish(s.prepare(request()))
    (alone,) = sampler().generate([request(seed=4, num_inference_steps=2)])
    torch.testing.assert_close(s.finish(second), alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("frames", [1, 8])
def test_dpm_solver_runs_with_trajectories(frames):
    traj, mask = identity_trajectories(frames, H, W)
    if frames > 1:  # token (0, 0, 0) moves one column per frame
        for t in range(1, frames):
            traj[0, t], mask[0, t] = torch.tensor([t, 0, t % W]), True
    req = request(
        num_frames=frames,
        solver="dpmsolver++",
        num_inference_steps=4,
        motion_field=torch.randn(frames - 1, 2, 2 * H, 2 * W),
        trajectories=traj,
        trajectory_mask=mask,
    )
    (out,) = sampler().generate([req])
    assert out.shape == (4, frames, H, W) and torch.isfinite(out).all()
    (again,) = sampler().generate([req])
    assert torch.equal(out, again)


def test_requests_that_do_not_fit_are_rejected():
    s = sampler()
    with pytest.raises(ValueError, match="class_label"):
        s.prepare(request(class_label=3))
    with pytest.raises(ValueError, match="motion_field"):
        s.prepare(request(motion_field=torch.zeros(F, 2, 2 * H, 2 * W)))
    with pytest.raises(ValueError, match="image_prior"):
        s.prepare(request(image_prior=torch.zeros(8, 4, 4)))
    with pytest.raises(ValueError, match="solver"):
        s.prepare(request(solver="euler"))
    with pytest.raises(ValueError, match="points"):
        s.prepare(request(trajectories=torch.zeros(3, F, 3, dtype=torch.long)))
