"""`VaeCodec(runtime=...)`: on onnxruntime the seeded small VAE gives torch's numbers within
1e-4, reports its runtime, reuses its cached export and parity check, and falls back to torch
with a warning when parity fails."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from services.models import onnx_session
from services.models.onnx_session import OnnxGraph, resolve_runtime
from services.models.vae_codec import VaeCodec


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("codec-runtime")
    return root / "no-weights", root / "onnx-cache"  # the seeded small VAE; a fresh cache


def _codec(dirs, runtime: str, cache=None) -> VaeCodec:
    vae_dir, default_cache = dirs
    cache = cache or default_cache
    codec = VaeCodec(vae_dir, device="cpu", batch_frames=2, runtime=runtime, onnx_cache=cache)
    codec.load()
    return codec


def _frames(n: int = 5) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (n, 1, 64, 32)).astype(np.float32)


def test_onnxruntime_matches_torch_and_says_so(dirs, one_torch_thread):
    ort, ref = _codec(dirs, "onnxruntime"), _codec(dirs, "torch")
    assert ort.info()["runtime"] == "onnxruntime" and "runtime_fallback" not in ort.info()
    assert ref.info()["runtime"] == "torch"
    frames = _frames()  # 5 frames in chunks of 2: the last chunk is smaller
    latents = ref.encode(frames)
    assert np.abs(ort.encode(frames) - latents).max() < 1e-4
    assert np.abs(ort.latent_means(frames) - ref.latent_means(frames)).max() < 1e-4
    decoded = ort.decode(latents)
    assert decoded.dtype == np.float32 and decoded.shape == frames.shape
    assert np.abs(decoded - ref.decode(latents)).max() < 1e-4
    assert len(list(dirs[1].glob("*.onnx"))) == 2


def test_a_second_load_reuses_the_export_and_the_check(dirs, one_torch_thread, monkeypatch):
    _codec(dirs, "onnxruntime")  # the cache is filled (a no-op after the test above)

    def tripwire(*args, **kwargs):
        raise AssertionError("exported or checked again")

    monkeypatch.setattr(onnx_session, "export_onnx", tripwire)
    monkeypatch.setattr(OnnxGraph, "check_parity", tripwire)
    again = _codec(dirs, "onnxruntime")
    assert again.info()["runtime"] == "onnxruntime"
    assert again.encode(_frames(1)).shape == (1, again.latent_channels, 8, 4)


def test_a_parity_failure_stays_on_torch_with_a_warning(
    dirs, tmp_path, one_torch_thread, monkeypatch, caplog
):
    check = OnnxGraph.check_parity
    monkeypatch.setattr(
        OnnxGraph, "check_parity", lambda self, inputs: check(self, inputs, atol=-1.0)
    )
    with caplog.at_level(logging.WARNING, logger="services.models.onnx_session"):
        codec = _codec(dirs, "onnxruntime", cache=tmp_path)
    assert codec.info()["runtime"] == "torch"
    assert "differs from torch" in codec.info()["runtime_fallback"]
    assert any("stays on torch" in r.getMessage() for r in caplog.records)
    assert not list(tmp_path.glob("*.json"))  # a failed check is not recorded
    ref = _codec(dirs, "torch")
    assert np.array_equal(codec.encode(_frames()), ref.encode(_frames()))


def test_runtime_choice(dirs, tmp_path):
    assert resolve_runtime("auto", torch.device("cpu")) == "onnxruntime"
    assert resolve_runtime("auto", torch.device("cuda")) == "torch"
    assert resolve_runtime("torch", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="CPU only"):
        resolve_runtime("onnxruntime", torch.device("cuda"))
    with pytest.raises(ValueError, match="unknown runtime"):
        VaeCodec(dirs[0], device="cpu", runtime="tensorrt")
    codec = _codec(dirs, "torch", cache=tmp_path)
    assert codec.info()["runtime"] == "torch" and not any(tmp_path.iterdir())
