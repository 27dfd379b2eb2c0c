"""Sequence LDM UNet: shapes, 2D -> sequence inflation, SAM / MFA processors, I/O."""

from __future__ import annotations

import functools
import itertools
import json

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from safetensors.torch import save_file

from services.models.ldm import (
    WEIGHTS_NAME,
    KeyFrameAttnProcessor,
    MotionFieldAttnProcessor,
    SequenceUNet,
    finetune_parameters,
    identity_trajectories,
    prepare_trajectories,
    preset_config,
)
from services.models.ldm.attention import FrameContext
from services.models.ldm.legacy import (
    LEGACY_FORMAT,
    convert_legacy_checkpoint,
    is_legacy_checkpoint,
    load_legacy_unet,
)
from services.models.weights import CheckpointError

# Tiny model: 4x4 latents, x2 "VAE" (motion embedder with one stride-2 step), 8x8 prior.
TINY = dict(
    sample_size=4,
    block_out_channels=(16, 32),
    attention_levels=(True, True),
    layers_per_block=1,
    num_attention_heads=2,
    cross_attention_dim=16,
    text_embed_dim=12,
    num_classes=3,
    norm_num_groups=8,
    image_prior_channels=8,
    image_prior_size=8,
    motion_embed_channels=(4, 8),
)
H = W = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**overrides) -> dict:
    return {**TINY, **overrides}


def write_legacy_checkpoint(model: SequenceUNet, directory) -> None:
    """The pre-diffusers layout: `model.safetensors` + the config fields with a `format` key."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, directory / "model.safetensors"
    )
    config = {"format": LEGACY_FORMAT, "class": "SequenceUNet", **model.config_dict()}
    (directory / "config.json").write_text(json.dumps(config))


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturbs every parameter so zero-initialised layers (temporal attention out, motion half
    of insert_unit) take part: tests then see every path."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


@functools.cache
def model_for(**flags) -> SequenceUNet:
    torch.manual_seed(0)
    return randomize(SequenceUNet(**tiny_config(**flags)))


def inputs(b: int, f: int, seed: int = 0, h: int = H, w: int = W) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return dict(
        sample=torch.randn(b, 4, f, h, w, generator=gen),
        timestep=torch.tensor([10, 700][:b] + [500] * max(0, b - 2)),
        class_labels=torch.arange(b) % 3,
        encoder_hidden_states=torch.randn(b, 5, 12, generator=gen),
        image_prior=torch.randn(b, 8, 8, 8, generator=gen),
        motion_field=torch.randn(b, 2, f - 1, 2 * h, 2 * w, generator=gen),
    )


def line_trajectories(f: int, h: int = H, w: int = W) -> tuple[torch.Tensor, torch.Tensor]:
    """Every token's trajectory moves one column right per frame (wrapping), all valid."""
    t, y, x = torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij")
    t, y, x = t.flatten(), y.flatten(), x.flatten()
    slots = [torch.stack([t, y, x], -1)]
    for other in range(1, f):
        tt = (t + other) % f
        slots.append(torch.stack([tt, y, (x + (tt - t)) % w], -1))
    traj = torch.stack(slots, 1)
    return traj, torch.ones(traj.shape[:2], dtype=torch.bool)


@pytest.mark.parametrize("frames", [4, 8])
@pytest.mark.parametrize("sam,mfa", [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("motion_model", [True, False])
def test_output_shape_for_every_condition_combination(frames, sam, mfa, motion_model):
    model = model_for(use_sam=sam, use_mfa=mfa, use_motion=motion_model)
    traj, mask = line_trajectories(frames)
    for text, prior, motion, trajectories in itertools.product([True, False], repeat=4):
        kw = inputs(2, frames)
        kw["encoder_hidden_states"] = kw["encoder_hidden_states"] if text else None
        kw["image_prior"] = kw["image_prior"] if prior else None
        kw["motion_field"] = kw["motion_field"] if motion else None
        if trajectories:
            kw.update(trajectories=traj, trajectory_mask=mask)
        with torch.no_grad():
            out = model(**kw)
        assert out.shape == (2, 4, frames, H, W)
        assert torch.isfinite(out).all()


def test_2d_model_and_no_prior_branch_shapes():
    model2d = randomize(SequenceUNet(**tiny_config(sequence=False, image_prior_channels=None)))
    kw = inputs(2, 3)
    with torch.no_grad():
        assert model2d(kw["sample"][:, :, 0], 5, kw["class_labels"]).shape == (2, 4, H, W)
        out = model2d(**{**kw, "image_prior": None})
    assert out.shape == (2, 4, 3, H, W)


@pytest.mark.parametrize("use_motion", [False, True])
def test_inflated_model_equals_2d_model_frame_by_frame(use_motion):
    torch.manual_seed(1)
    model2d = randomize(SequenceUNet(**tiny_config(sequence=False)), seed=1)
    seq = SequenceUNet.from_2d(model2d, use_sam=False, use_motion=use_motion).eval()
    kw = inputs(2, 4, seed=3)
    with torch.no_grad():
        out = seq(**kw)
        for f in range(4):
            frame = model2d(**{**kw, "sample": kw["sample"][:, :, f], "motion_field": None})
            # fp32 rounding only: same ops, batched differently (B*F rows vs B rows).
            torch.testing.assert_close(out[:, :, f], frame, atol=1e-5, rtol=1e-5)


def test_key_frame_attention_on_one_frame_is_self_attention():
    model2d = randomize(SequenceUNet(**tiny_config(sequence=False)), seed=2)
    seq = SequenceUNet.from_2d(model2d).eval()  # SAM, MFA and motion on
    kw = inputs(2, 1, seed=4)
    traj, mask = identity_trajectories(1, H, W)
    with torch.no_grad():
        out = seq(**kw, trajectories=traj, trajectory_mask=mask)[:, :, 0]
        ref = model2d(**{**kw, "sample": kw["sample"][:, :, 0]})
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_motion_field_attention_attends_only_along_trajectories():
    f, h, w, c, heads = 3, 2, 3, 8, 2  # non-square grid: catches an x/y mix-up
    n = h * w
    # Token (t=0, row=0, col=0) follows (1, row=1, col=2) then (2, row=0, col=1); all other
    # tokens alone. Triples are (t, row, col).
    traj, mask = identity_trajectories(f, h, w)
    traj[0, 1], traj[0, 2] = torch.tensor([1, 1, 2]), torch.tensor([2, 0, 1])
    mask[0, 1:] = True
    index, mask = prepare_trajectories(traj, mask, f, h, w)
    ctx = FrameContext(num_frames=f, traj_index=index, traj_mask=mask)
    feats = torch.randn(f, n, c)

    mfa = MotionFieldAttnProcessor.attend_along_trajectories

    def out0(x):
        return mfa(x, heads, ctx)[0, 0]

    base = out0(feats)
    off = feats.clone()
    off[1, 0 * w + 2] += 5.0  # (t=1, row=0, col=2): not on the trajectory
    off[2, 1 * w + 1] += 5.0  # (t=2, row=1, col=1): not on it either
    off[0, 1] += 5.0  # (t=0, row=0, col=1): same frame, not on it
    torch.testing.assert_close(out0(off), base, atol=0, rtol=0)
    on = feats.clone()
    on[1, 1 * w + 2] += 5.0  # (t=1, row=1, col=2): on the trajectory
    assert not torch.allclose(out0(on), base)
    # Lone tokens only see themselves: MFA is the identity there.
    torch.testing.assert_close(mfa(feats, heads, ctx)[1:], feats[1:])


def test_mfa_in_the_model_uses_the_trajectories():
    model = model_for(use_sam=True, use_mfa=True, use_motion=True)
    kw = inputs(1, 4, seed=5)
    traj, mask = line_trajectories(4)
    ident = identity_trajectories(4, H, W)
    with torch.no_grad():
        plain = model(**kw)
        with_ident = model(**kw, trajectories=ident[0], trajectory_mask=ident[1])
        with_traj = model(**kw, trajectories=traj, trajectory_mask=mask)
        all_masked = model(**kw, trajectories=traj, trajectory_mask=torch.zeros_like(mask))
    torch.testing.assert_close(with_ident, plain, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(all_masked, plain, atol=1e-6, rtol=1e-6)
    assert (with_traj - plain).abs().max() > 1e-4


def test_prepare_trajectories_official_layout_and_validation():
    f, h, w = 2, 2, 2
    traj, mask = identity_trajectories(f, h, w)  # (8, 2, 3)
    # Official layout: [self] + 8 neighbours + trajectory slots; only slot 0 and the last F-1
    # are used.
    neighbours = torch.full((traj.shape[0], 8, 3), 99)
    official = torch.cat([traj[:, :1], neighbours, traj[:, 1:]], 1)
    official_mask = torch.cat([mask[:, :1], torch.ones(8, 8, dtype=torch.bool), mask[:, 1:]], 1)
    index, valid = prepare_trajectories(official, official_mask, f, h, w)
    assert index.shape == (1, 8, 2) and valid.shape == (1, 8, 2)
    assert index[0, :, 0].tolist() == list(range(8))  # t*h*w + row*w + col in flat order
    assert not valid[0, :, 1].any()
    official[0, -1] = torch.tensor([1, 0, 2])  # col 2 is off the 2-column grid
    with pytest.raises(ValueError, match="outside"):
        prepare_trajectories(official, torch.ones(8, 10, dtype=torch.bool), f, h, w)
    with pytest.raises(ValueError, match="points"):
        prepare_trajectories(traj, mask, 3, h, w)


def test_motion_field_and_prior_reach_the_output():
    model = model_for(use_sam=True, use_mfa=True, use_motion=True)
    kw = inputs(1, 4, seed=6)
    with torch.no_grad():
        base = model(**kw)
        no_motion = model(**{**kw, "motion_field": None})
        zero_motion = model(**{**kw, "motion_field": torch.zeros_like(kw["motion_field"])})
        no_prior = model(**{**kw, "image_prior": None})
    assert (base - no_motion).abs().max() > 1e-4
    assert (base - no_prior).abs().max() > 1e-4
    torch.testing.assert_close(no_motion, zero_motion)  # missing = dropped (all-zero)


def test_class_labels_are_required():
    model = model_for(use_sam=True, use_mfa=True, use_motion=True)
    kw = inputs(1, 2)
    with pytest.raises(ValueError, match="class_labels"):
        model(**{**kw, "class_labels": None})


def test_save_and_load_round_trip(tmp_path):
    model = model_for(use_sam=True, use_mfa=True, use_motion=True)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", WEIGHTS_NAME]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["block_out_channels"] == [16, 32] and config["_class_name"] == "SequenceUNet"
    loaded = SequenceUNet.from_pretrained(tmp_path)
    assert loaded.config_dict() == model.config_dict()
    kw = inputs(1, 2, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**kw), model(**kw), atol=0, rtol=0)


def test_from_pretrained_is_strict(tmp_path):
    model = model_for(use_sam=True, use_mfa=True, use_motion=True)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "use_motion": False}))
    with pytest.raises(CheckpointError, match="unexpected keys: .*motion_encoder"):
        SequenceUNet.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        SequenceUNet.from_pretrained(tmp_path / "nothing")


def test_legacy_checkpoint_converts_to_the_same_model(tmp_path):
    model = model_for(use_sam=True, use_mfa=True, use_motion=True)
    old = tmp_path / "old"
    write_legacy_checkpoint(model, old)
    (old / "classes.json").write_text('["a", "b", "c"]')
    assert is_legacy_checkpoint(old) and not is_legacy_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="services.models.ldm.legacy"):
        SequenceUNet.from_pretrained(old)
    new = convert_legacy_checkpoint(old, tmp_path / "new")
    assert (new / "classes.json").read_text() == '["a", "b", "c"]'
    kw = inputs(1, 3, seed=8)
    with torch.no_grad():
        expected = model(**kw)
        for converted in (load_legacy_unet(old), SequenceUNet.from_pretrained(new)):
            assert converted.config_dict() == model.config_dict()
            torch.testing.assert_close(converted(**kw), expected, atol=0, rtol=0)
    convert_legacy_checkpoint(old, old)  # in place: the old weights file goes
    assert sorted(p.name for p in old.iterdir()) == ["classes.json", "config.json", WEIGHTS_NAME]
    with torch.no_grad():
        torch.testing.assert_close(
            SequenceUNet.from_pretrained(old)(**kw), expected, atol=0, rtol=0
        )


def test_sam_and_mfa_are_attention_processors():
    model = randomize(SequenceUNet(**tiny_config()), seed=9)
    spatial = {k: v for k, v in model.attn_processors.items() if k.endswith("attn1.processor")}
    kinds = {k: type(v) for k, v in spatial.items()}
    # MFA at the highest resolution (down level 0 and the last up block), key frames elsewhere.
    assert kinds["down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"] is (
        MotionFieldAttnProcessor
    )
    assert kinds["up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor"] is (
        MotionFieldAttnProcessor
    )
    assert kinds["mid_block.attentions.0.transformer_blocks.0.attn1.processor"] is (
        KeyFrameAttnProcessor
    )
    others = [p for k, p in model.attn_processors.items() if k not in spatial]
    assert others and all(isinstance(p, AttnProcessor2_0) for p in others)  # diffusers' own
    kw = inputs(1, 4, seed=10)
    traj, mask = line_trajectories(4)
    with torch.no_grad():
        with_mfa = model(**kw, trajectories=traj, trajectory_mask=mask)
        without = model(**kw)
        # Swapping the MFA processors for key-frame ones is MFA off, trajectories or not.
        swapped = {
            k: KeyFrameAttnProcessor() if isinstance(p, MotionFieldAttnProcessor) else p
            for k, p in model.attn_processors.items()
        }
        model.set_attn_processor(swapped)
        key_frames_only = model(**kw, trajectories=traj, trajectory_mask=mask)
        # Plain per-frame self-attention everywhere: SAM off; frames no longer see each other
        # through attn1 (the temporal attention still mixes them).
        model.set_attn_processor(AttnProcessor2_0())
        plain = model(**kw)
    assert (with_mfa - without).abs().max() > 1e-4
    torch.testing.assert_close(key_frames_only, without, atol=0, rtol=0)
    assert (plain - without).abs().max() > 1e-4


def test_sd_unet_weights_load_by_name():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    sd = UNet2DConditionModel(
        sample_size=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=2,
        cross_attention_dim=16,
        norm_num_groups=8,
    ).eval()
    randomize(sd)
    ours = SequenceUNet.from_diffusers_unet(sd, image_prior_channels=None).eval()
    x, text = torch.randn(2, 4, H, W), torch.randn(2, 5, 16)
    with torch.no_grad():
        ref = sd(x, torch.tensor([3, 900]), encoder_hidden_states=text).sample
        out = ours(x, torch.tensor([3, 900]), encoder_hidden_states=text)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_presets_and_finetune_parameters():
    with torch.device("meta"):  # the 0.9 G-parameter model, nothing allocated
        sd14 = SequenceUNet.from_preset("sd14")
    assert sd14.config.block_out_channels == (320, 640, 1280, 1280)
    assert 0.8e9 < sd14.num_parameters() < 1.0e9
    small = SequenceUNet.from_preset("small", num_classes=3)
    assert small.latent_downsample == 8 and small.config.num_classes == 3
    with pytest.raises(ValueError):
        preset_config("nope")
    with pytest.raises(ValueError, match="divisible"):
        SequenceUNet(**tiny_config(block_out_channels=(16, 30)))
    names = [
        n for n, _ in finetune_parameters(model_for(use_sam=True, use_mfa=True, use_motion=True))
    ]
    assert any("attn_temp" in n for n in names) and any("insert_unit" in n for n in names)
    assert not any(".ff." in n or "resnets" in n or "attn2.to_k" in n for n in names)
