"""Condition encoders: LiteMedSAM / MedSAM ViT-B image priors and the text encoder."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.pixels import pixel_array

from services.models.medsam import (
    ENCODER_PREFIX,
    PRIOR_SHAPE,
    ImagePriorEncoder,
    litemedsam_checkpoint_path,
    load_image_prior_encoder,
)
from services.models.medsam_preprocess import LITEMEDSAM_PREPROCESSING, preprocess_frames
from services.models.sam_vit import SamViTConfig, SamViTEncoder
from services.models.text import TextProjection, load_text_encoder
from services.models.tiny_vit import build_litemedsam_encoder
from services.models.weights import CheckpointError, check_state_dict, read_torch_state_dict

# LiteMedSAM forwards cost ~1.5 s per frame here: the fixtures below share them across tests.


@pytest.fixture(scope="module")
def echo_frames() -> np.ndarray:
    """Two grey frames (2, 240, 320) uint8 of a real cardiac ultrasound cine (luma channel)."""
    ds = dcmread(get_testdata_file("examples_ybr_color.dcm"))
    frames = [pixel_array(ds, index=i, as_rgb=False)[..., 0] for i in (0, 1)]
    return np.stack(frames)


@pytest.fixture(scope="module")
def lite_encoder() -> ImagePriorEncoder:
    return load_image_prior_encoder("litemedsam")


@pytest.fixture(scope="module")
def frame0_prior(lite_encoder: ImagePriorEncoder, echo_frames: np.ndarray) -> np.ndarray:
    return lite_encoder.encode(echo_frames[0])


# --- LiteMedSAM ------------------------------------------------------------------------------


def test_litemedsam_weights_load_strictly(lite_encoder: ImagePriorEncoder) -> None:
    state = read_torch_state_dict(litemedsam_checkpoint_path(), prefix=ENCODER_PREFIX)
    assert len(state) == 298  # every image_encoder.* tensor of lite_medsam.pth is used
    loaded = lite_encoder.network.state_dict()
    assert set(loaded) == set(state)
    key = "layers.2.blocks.5.attn.attention_biases"
    torch.testing.assert_close(loaded[key], state[key], rtol=0, atol=0)
    assert lite_encoder.device.type == "cpu" and lite_encoder.dtype == torch.float32


def test_litemedsam_rejects_a_truncated_state_dict() -> None:
    state = read_torch_state_dict(litemedsam_checkpoint_path(), prefix=ENCODER_PREFIX)
    del state["neck.2.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys: neck\.2\.weight"):
        check_state_dict(build_litemedsam_encoder(), state, "lite_medsam.pth")


def test_litemedsam_prior_of_a_real_echo_frame(frame0_prior: np.ndarray) -> None:
    assert frame0_prior.shape == (1, *PRIOR_SHAPE)
    assert frame0_prior.dtype == np.float32
    assert np.isfinite(frame0_prior).all()
    assert frame0_prior.std() > 0.01  # not a constant map


def test_litemedsam_batch_matches_single_calls(
    lite_encoder: ImagePriorEncoder, echo_frames: np.ndarray, frame0_prior: np.ndarray
) -> None:
    batched = lite_encoder.encode(echo_frames)
    single1 = lite_encoder.encode(echo_frames[1])
    assert batched.shape == (2, *PRIOR_SHAPE)
    # fp32 CPU kernels may pick different blockings per batch size: allow rounding noise only.
    np.testing.assert_allclose(batched[0], frame0_prior[0], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(batched[1], single1[0], atol=1e-4, rtol=1e-4)
    assert np.abs(batched[0] - batched[1]).max() > 1e-3  # two frames, two priors


def test_litemedsam_preprocessing_matches_the_original_recipe(echo_frames: np.ndarray) -> None:
    x = preprocess_frames(echo_frames[:1], LITEMEDSAM_PREPROCESSING)
    assert x.shape == (1, 3, 256, 256) and x.dtype == np.float32
    # 240x320 -> longest side 256 -> 192x256, min-max to [0, 1], zero padding at the bottom.
    assert np.array_equal(x[0, 0], x[0, 2])
    assert x[0, 0, :192].min() == 0.0 and x[0, 0, :192].max() == 1.0
    assert not x[0, :, 192:].any()
    flat = preprocess_frames(np.full((8, 8), 7.0), LITEMEDSAM_PREPROCESSING)
    assert not flat.any()


@pytest.mark.parametrize(
    "frames",
    [np.zeros((1, 2, 8, 8)), np.zeros((0, 8, 8)), np.full((1, 8, 8), np.nan)],
    ids=["rank4", "empty", "nan"],
)
def test_prior_encoder_rejects_bad_frames(lite_encoder: ImagePriorEncoder, frames) -> None:
    with pytest.raises(ValueError, match="frames"):
        lite_encoder.encode(frames)


# --- MedSAM ViT-B ----------------------------------------------------------------------------

# SAM ViT-B image-encoder shapes, written out independently of our module.
_VIT_B_SHAPES = {
    "patch_embed.proj.weight": (768, 3, 16, 16),
    "pos_embed": (1, 64, 64, 768),
    "blocks.0.attn.rel_pos_h": (27, 64),  # windowed block: 2 * 14 - 1 rows
    "blocks.2.attn.rel_pos_w": (127, 64),  # global block: 2 * 64 - 1 rows
    "blocks.11.attn.qkv.weight": (2304, 768),
    "blocks.11.mlp.lin1.weight": (3072, 768),
    "neck.0.weight": (256, 768, 1, 1),
    "neck.2.weight": (256, 256, 3, 3),
    "neck.3.bias": (256,),
}
_VIT_B_KEYS = 2 + 1 + 12 * 14 + 6  # patch embed, pos embed, 12 blocks, neck


@pytest.fixture(scope="module")
def vit_b_state() -> dict[str, torch.Tensor]:
    """A full MedSAM-style checkpoint (`image_encoder.*` plus decoder keys) with random values.

    Every tensor is a view of one random buffer, so `torch.save` writes ~9 MB instead of 360 MB.
    """
    shapes = {k: v.shape for k, v in SamViTEncoder().state_dict().items()}
    base = torch.randn(
        max(s.numel() for s in shapes.values()), generator=torch.Generator().manual_seed(0)
    )
    state = {ENCODER_PREFIX + k: base[: s.numel()].view(s) for k, s in shapes.items()}
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 256)  # ignored by the loader
    return state


def test_vit_b_checkpoint_has_sam_shapes(vit_b_state: dict[str, torch.Tensor]) -> None:
    encoder_keys = [k for k in vit_b_state if k.startswith(ENCODER_PREFIX)]
    assert len(encoder_keys) == _VIT_B_KEYS
    for key, shape in _VIT_B_SHAPES.items():
        assert tuple(vit_b_state[ENCODER_PREFIX + key].shape) == shape, key


def test_vit_b_checkpoint_loads_strictly(
    vit_b_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    path = tmp_path / "medsam_vit_b.pth"
    torch.save(vit_b_state, path)
    encoder = load_image_prior_encoder("medsam_vit_b", path)
    assert encoder.preprocessing.size == 1024
    loaded = encoder.network.state_dict()
    for key in ("pos_embed", "blocks.7.attn.rel_pos_h", "neck.3.weight"):
        torch.testing.assert_close(loaded[key], vit_b_state[ENCODER_PREFIX + key], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        ("missing", r"missing keys: blocks\.4\.attn\.rel_pos_h"),
        (
            "misshaped",
            r"shape mismatch: pos_embed: checkpoint \(1, 32, 32, 768\) vs model \(1, 64, 64, 768\)",
        ),
    ],
)
def test_vit_b_checkpoint_errors_name_the_key(
    vit_b_state: dict[str, torch.Tensor], tmp_path: Path, edit: str, pattern: str
) -> None:
    state = dict(vit_b_state)
    if edit == "missing":
        del state[ENCODER_PREFIX + "blocks.4.attn.rel_pos_h"]
    else:
        state[ENCODER_PREFIX + "pos_embed"] = torch.zeros(1, 32, 32, 768)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_image_prior_encoder("medsam_vit_b", path)
    assert str(path) in str(info.value)


def test_vit_b_needs_a_checkpoint() -> None:
    with pytest.raises(ValueError, match="checkpoint"):
        load_image_prior_encoder("medsam_vit_b")


def test_sam_vit_forward_with_windows_padding_and_global_attention() -> None:
    # ViT-B blocks at a reduced input size (grid 10, window 4 -> padded to 12) keep this fast;
    # the full 1024x1024 forward is the slow test below.
    config = SamViTConfig(
        img_size=160,
        embed_dim=64,
        depth=2,
        num_heads=4,
        out_chans=32,
        window_size=4,
        global_attn_indexes=(1,),
    )
    model = SamViTEncoder(config).eval()
    with torch.inference_mode():
        y = model(torch.rand(2, 3, 160, 160))
        y1 = model(torch.rand(2, 3, 160, 160)[:1])
    assert y.shape == (2, 32, 10, 10) and y1.shape == (1, 32, 10, 10)
    assert torch.isfinite(y).all()


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("RUN_SLOW"), reason="full ViT-B at 1024 takes ~12 s: RUN_SLOW=1"
)
def test_vit_b_full_size_prior(
    vit_b_state: dict[str, torch.Tensor], tmp_path: Path, echo_frames: np.ndarray
) -> None:
    path = tmp_path / "medsam_vit_b.pth"
    torch.save(vit_b_state, path)
    prior = load_image_prior_encoder("medsam_vit_b", path).encode(echo_frames[0])
    assert prior.shape == (1, *PRIOR_SHAPE) and np.isfinite(prior).all()


# --- Text --------------------------------------------------------------------------------------

CAPTIONS = [
    "The isoecho plaque is in the lateral and far walls.",
    "Normal left ventricle, apical four-chamber view.",
    "",
]


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder("minilm", projection_dim=96, max_length=32)


def test_minilm_token_embeddings_after_projection(minilm) -> None:
    result = minilm.encode_with_mask(CAPTIONS)
    assert result.embeddings.shape == (3, 32, 96) and result.embeddings.dtype == np.float32
    assert np.isfinite(result.embeddings).all()
    assert result.attention_mask.shape == (3, 32)
    assert result.attention_mask[2].sum() == 2  # "" is [CLS] [SEP]: the unconditional caption
    assert minilm.hidden_size == 384 and minilm.output_dim == 96


def test_minilm_different_texts_differ_and_same_text_repeats(minilm) -> None:
    a, b, empty = minilm.encode(CAPTIONS)
    assert np.abs(a - b).mean() > 1e-2
    assert np.abs(a - empty).mean() > 1e-2
    np.testing.assert_allclose(minilm.encode(CAPTIONS[:1])[0], a, atol=1e-5)


def test_minilm_truncates_to_the_fixed_length(minilm) -> None:
    long = " ".join(["echocardiogram"] * 100)
    result = minilm.encode_with_mask([long])
    assert result.embeddings.shape == (1, 32, 96) and result.attention_mask.all()


def test_projection_save_reload_is_identical(minilm, tmp_path: Path) -> None:
    with torch.no_grad():
        minilm.projection.linear.weight.add_(0.5)  # as if trained
    before = minilm.encode(CAPTIONS)
    path = tmp_path / "projection.safetensors"
    minilm.save_projection(path)
    reloaded = load_text_encoder("minilm", projection_path=path, max_length=32)
    np.testing.assert_array_equal(reloaded.encode(CAPTIONS), before)
    assert TextProjection.load(path).out_dim == 96


def test_projection_is_trainable_through_embed(minilm) -> None:
    embeddings, _ = minilm.embed(CAPTIONS[:2])
    embeddings.sum().backward()
    assert minilm.projection.linear.weight.grad is not None
    assert all(p.grad is None for p in minilm.backbone.parameters())
    minilm.projection.zero_grad(set_to_none=True)


def test_clip_text_encoder_from_a_local_folder(tmp_path: Path) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(tmp_path / "tokenizer")
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    CLIPTextModel(config).save_pretrained(tmp_path / "text_encoder")
    encoder = load_text_encoder("clip", tmp_path)
    out = encoder.encode(["heart wall", ""])
    assert out.shape == (2, 77, 32)  # SD layout: 77 tokens, backbone width (no projection)
    assert np.abs(out[0] - out[1]).mean() > 1e-4


def test_text_encoder_rejects_a_bare_string(minilm) -> None:
    with pytest.raises(ValueError, match="texts"):
        minilm.encode("a caption")  # type: ignore[arg-type]


def test_unknown_kinds_are_rejected() -> None:
    with pytest.raises(ValueError, match=re.escape("'sam2'")):
        load_image_prior_encoder("sam2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clip needs path"):
        load_text_encoder("clip")
