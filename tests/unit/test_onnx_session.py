"""`services.models.onnx_session`: the exported VAE on onnxruntime matches torch, the export is
cached per weights (touched when reused, the cache pruned after an export), and a difference
above the tolerance is refused."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from services.models.onnx_export import vae_specs
from services.models.onnx_session import OnnxGraph, ParityError, export_graph


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    return vae_specs(tmp_path_factory.mktemp("no-weights"))  # the seeded small VAE


def test_vae_graphs_match_torch_and_are_cached(specs, tmp_path, one_torch_thread, monkeypatch):
    monkeypatch.delenv("GENAUG_ONNX_CACHE_MAX_AGE_DAYS", raising=False)  # the defaults
    monkeypatch.delenv("GENAUG_ONNX_CACHE_MAX_MIB", raising=False)
    encode_spec, decode_spec = specs
    stale = tmp_path / f"vae_encode-{'0' * 16}.onnx"  # an export of long-gone weights
    stale.write_bytes(b"onnx")
    os.utime(stale, (0, 0))
    encode = export_graph("vae_encode", encode_spec, tmp_path, threads=1)
    assert not stale.exists()  # pruned after the export
    frames = np.random.default_rng(0).uniform(-1, 1, (3, 1, 64, 32)).astype(np.float32)
    parity = encode.check_parity([frames, frames[:1]])
    assert parity.ok and parity.max_abs_diff < 1e-4 and len(parity.diffs) == 2
    latents = encode(torch.from_numpy(frames))  # a tensor is accepted too
    decode = export_graph("vae_decode", decode_spec, tmp_path, threads=1)
    assert decode.check_parity([latents]).ok
    assert decode(latents).shape == frames.shape
    os.utime(encode.path, (0, 0))
    again = export_graph("vae_encode", encode_spec, tmp_path, threads=1)
    assert again.path == encode.path and len(list(tmp_path.glob("*.onnx"))) == 2
    assert time.time() - encode.path.stat().st_mtime < 600  # reuse marks it used


def test_a_difference_above_the_tolerance_is_refused(specs, tmp_path, one_torch_thread):
    encode_spec, _ = specs
    graph = export_graph("vae_encode", encode_spec, tmp_path, threads=1)
    frames = np.zeros((1, 1, 64, 64), np.float32)
    with pytest.raises(ParityError, match="differs from torch"):
        graph.check_parity([frames], atol=-1.0)
    assert not graph.check_parity([frames], atol=-1.0, raise_above=False).ok
    with pytest.raises(ValueError, match="unknown graph"):
        OnnxGraph("unet", graph.path)
