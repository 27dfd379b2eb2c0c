"""The grayscale AutoencoderKL configurations and their safetensors round trip."""

import numpy as np
import pytest
import torch

from services.models.vae import build_vae, load_or_init_vae, load_vae, save_vae
from services.models.vae_codec import VaeCodec


@pytest.mark.parametrize(
    "name, size, channels, latent", [("small", 64, 8, 8), ("full", 256, 4, 32)]
)
def test_shapes(name, size, channels, latent):
    vae = build_vae(name).eval()
    frames = torch.zeros(2 if name == "small" else 1, 1, size, size)
    with torch.inference_mode():
        z = vae.encode(frames).latent_dist.mode()
        assert z.shape == (frames.shape[0], channels, latent, latent)
        if name == "small":  # the full decoder at 256 px costs seconds; its shape is symmetric
            assert vae.decode(z).sample.shape == frames.shape


def test_full_config_is_the_reference_vae():
    config = build_vae("full").config
    assert tuple(config.block_out_channels) == (128, 256, 512, 512)
    assert (config.in_channels, config.out_channels, config.latent_channels) == (1, 1, 4)
    assert config.scaling_factor == pytest.approx(0.18215)


def test_seeded_initialisation_is_deterministic():
    a, b = build_vae("small", seed=3), build_vae("small", seed=3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_save_and_reload_give_identical_outputs(tmp_path):
    vae = build_vae("small", seed=1)
    save_vae(vae, tmp_path / "vae", provenance={"note": "test"})
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    reloaded, provenance = load_or_init_vae(tmp_path / "vae")
    assert provenance == "trained"
    x = torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        np.testing.assert_array_equal(
            vae.eval().encode(x).latent_dist.mode().numpy(),
            reloaded.eval().encode(x).latent_dist.mode().numpy(),
        )
    codec_a, codec_b = VaeCodec(tmp_path / "vae"), VaeCodec(tmp_path / "vae")
    codec_a.load(), codec_b.load()
    frames = x.numpy()
    np.testing.assert_array_equal(codec_a.encode(frames), codec_b.encode(frames))


def test_loading_requires_safetensors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_vae(tmp_path)
