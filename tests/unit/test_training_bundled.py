"""The bundled trained weights in deploy/model-repository load strictly and agree on classes."""

import json
from pathlib import Path

import pytest
import torch

from services.models.classifier import VideoClassifier
from services.models.ldm import WEIGHTS_NAME, SequenceUNet
from services.models.vae import TRAINED, load_or_init_vae

REPO = Path(__file__).resolve().parents[2] / "deploy" / "model-repository" / "phantom" / "1"
MAX_BYTES = 40 * 1024 * 1024

pytestmark = pytest.mark.skipif(
    not (REPO / "ldm" / WEIGHTS_NAME).is_file(), reason="no bundled weights"
)


def test_bundled_models_load_strictly_and_share_the_classes():
    classes = json.loads((REPO / "classes.json").read_text())
    assert classes == sorted(classes) and len(classes) >= 2
    vae, provenance = load_or_init_vae(REPO / "vae")
    assert provenance == TRAINED
    assert json.loads((REPO / "vae" / "provenance.json").read_text())["provenance"] == "trained"
    unet = SequenceUNet.from_pretrained(REPO / "ldm")
    assert unet.config.sequence and unet.config.num_classes == len(classes)
    assert unet.dtype == torch.float32
    assert unet.config.in_channels == unet.config.out_channels == vae.config.latent_channels
    classifier = VideoClassifier.from_pretrained(REPO / "classifier")
    assert classifier.config.num_classes == len(classes)
    for sub in ("ldm", "classifier"):
        assert json.loads((REPO / sub / "classes.json").read_text()) == classes
    with torch.inference_mode():
        z = vae.encode(torch.zeros(1, 1, 64, 64)).latent_dist.mode()
    assert z.shape == (1, vae.config.latent_channels, 8, 8)


def test_bundled_weights_are_safetensors_and_small():
    files = [p for p in REPO.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".pt", ".pth", ".bin", ".pkl", ".ckpt")]
    weights = sum(p.stat().st_size for p in files if p.suffix == ".safetensors")
    assert weights < MAX_BYTES
