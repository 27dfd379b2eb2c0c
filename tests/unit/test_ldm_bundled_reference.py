"""The bundled sequence LDM gives the numbers its pre-diffusers checkpoint gave.

`ldm_bundled_reference.safetensors` holds a UNet forward and a 5-step DDIM run of the bundled
model, computed with the code and checkpoint of commit ad77bf4 (the `SequenceUNet` before it
became a diffusers `ModelMixin`, stored as `model.safetensors` + `LDMConfig` JSON). The
converted weights must reproduce both (fp32, CPU) to within float32 kernel noise.

Why the bound is relative, 1e-5 of the output's largest magnitude: the same fp32 computation
differs between CPU kernels. Measured on one Xeon (AVX-512 + AMX) by forcing other kernels
(ATEN_CPU_CAPABILITY=default|avx2|avx512, ONEDNN_MAX_CPU_ISA / MKL_ENABLE_INSTRUCTIONS=AVX2),
the UNet output moved by up to 3.6e-6 (8.5e-7 of its scale 4.2) and the 5-step guided DDIM
latents by up to 1.45e-5 (4.0e-6 of their scale 3.6); the former absolute 1e-6 bound therefore
failed on some CI machines and passed on others. A conversion bug is four orders larger: swapping
the query and key projections of one attention moves the output by 2.7e-2 (checked below).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from services.models.ldm import WEIGHTS_NAME, SamplingRequest, SequenceSampler, SequenceUNet

REPO = Path(__file__).resolve().parents[2] / "deploy" / "model-repository" / "phantom" / "1"
REFERENCE = Path(__file__).with_name("ldm_bundled_reference.safetensors")
FRAMES, SIDE, TEXT_TOKENS, TEXT_DIM = 4, 8, 7, 384
# Of the reference output's largest magnitude (see the module docstring for the measurements).
RELATIVE_TOLERANCE = 1e-5


def line_trajectories(frames: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, F, 3) (t, row, col) trajectories moving one column right per frame (wrapping), with
    every third slot after the first masked out, so MFA both attends and masks."""
    t, y, x = torch.meshgrid(
        torch.arange(frames), torch.arange(side), torch.arange(side), indexing="ij"
    )
    t, y, x = t.flatten(), y.flatten(), x.flatten()
    slots = [torch.stack([t, y, x], -1)]
    for other in range(1, frames):
        tt = (t + other) % frames
        slots.append(torch.stack([tt, y, (x + (tt - t)) % side], -1))
    traj = torch.stack(slots, 1)
    mask = torch.ones(traj.shape[:2], dtype=torch.bool)
    mask[::3, 1:] = False
    return traj, mask


def forward_inputs() -> dict:
    """A batch of two clips with every condition (seeded CPU RNG: the same on every run)."""
    gen = torch.Generator().manual_seed(20240607)
    traj, mask = line_trajectories(FRAMES, SIDE)
    return dict(
        sample=torch.randn(2, 8, FRAMES, SIDE, SIDE, generator=gen),
        timestep=torch.tensor([10, 700]),
        class_labels=torch.tensor([0, 2]),
        encoder_hidden_states=torch.randn(2, TEXT_TOKENS, TEXT_DIM, generator=gen),
        image_prior=torch.randn(2, 256, 64, 64, generator=gen),
        motion_field=2.0 * torch.randn(2, 2, FRAMES - 1, 64, 64, generator=gen),
        trajectories=traj,
        trajectory_mask=mask,
    )


def ddim_request() -> tuple[torch.Tensor, SamplingRequest]:
    """The empty-text embedding and one guided 5-step DDIM request with every condition."""
    gen = torch.Generator().manual_seed(7)
    empty = torch.randn(TEXT_TOKENS, TEXT_DIM, generator=gen)
    traj, mask = line_trajectories(FRAMES, SIDE)
    request = SamplingRequest(
        num_frames=FRAMES,
        class_label=1,
        seed=11,
        num_inference_steps=5,
        guidance_scale=3.0,
        text_embedding=torch.randn(TEXT_TOKENS, TEXT_DIM, generator=gen),
        image_prior=torch.randn(256, 64, 64, generator=gen),
        motion_field=2.0 * torch.randn(FRAMES - 1, 2, 64, 64, generator=gen),
        trajectories=traj,
        trajectory_mask=mask,
    )
    return empty, request


@torch.inference_mode()
def reference_outputs(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What the reference file stores: `unet_output` and `ddim_latents` of `unet` (fp32, CPU)."""
    unet = unet.eval()
    out = unet(**forward_inputs())
    empty, request = ddim_request()
    (latents,) = SequenceSampler(unet, empty_text_embedding=empty).generate([request])
    return {"unet_output": out.contiguous(), "ddim_latents": latents.contiguous()}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.skipif(not (REPO / "ldm" / WEIGHTS_NAME).is_file(), reason="no bundled weights")
def test_converted_bundled_weights_reproduce_the_pre_diffusers_model():
    reference = load_file(str(REFERENCE))
    outputs = reference_outputs(SequenceUNet.from_pretrained(REPO / "ldm"))
    assert set(outputs) == set(reference)
    for name, expected in reference.items():
        assert outputs[name].shape == expected.shape
        diff = (outputs[name] - expected).abs().max().item()
        bound = RELATIVE_TOLERANCE * expected.abs().max().item()
        assert diff <= bound, f"{name}: max |new - old| = {diff:.3g} > {bound:.3g}"
    # The reference is not degenerate: the conditions and the sampler moved the numbers.
    assert reference["unet_output"].std() > 0.1 and reference["ddim_latents"].std() > 0.1


@pytest.mark.skipif(not (REPO / "ldm" / WEIGHTS_NAME).is_file(), reason="no bundled weights")
def test_the_bound_catches_a_conversion_bug():
    """Query and key projections of one attention swapped (a plausible key-mapping slip): both
    outputs leave the bound by far, so the bound is not vacuous."""
    unet = SequenceUNet.from_pretrained(REPO / "ldm")
    attention = unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn1")
    with torch.no_grad():
        query = attention.to_q.weight.clone()
        attention.to_q.weight.copy_(attention.to_k.weight)
        attention.to_k.weight.copy_(query)
    reference = load_file(str(REFERENCE))
    outputs = reference_outputs(unet)
    for name, expected in reference.items():
        diff = (outputs[name] - expected).abs().max().item()
        assert diff > 100 * RELATIVE_TOLERANCE * expected.abs().max().item(), name


def test_bundled_folder_has_the_diffusers_layout_only():
    names = {p.name for p in (REPO / "ldm").iterdir()}
    assert {"config.json", WEIGHTS_NAME} <= names
    assert "model.safetensors" not in names  # the pre-diffusers weights are gone
