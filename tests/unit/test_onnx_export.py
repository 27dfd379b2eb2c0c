"""`genaug export-onnx`: layouts, Triton configs and onnxruntime-vs-torch parity.

One module fixture runs the CLI once (all three models, Triton layout); the parity tests compare
those files against the code the services run (`VaeCodec`, `ImagePriorEncoder`). Tolerance:
1e-4 max abs difference, fp32 throughout; measured ~2e-7 (encode), ~4e-6 (decode) and ~3e-6
(LiteMedSAM), the differences being fp32 accumulation order between the two runtimes.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.pixels import pixel_array
from tritonclient.grpc import model_config_pb2

from clients import cli
from services.models.medsam import load_image_prior_encoder
from services.models.medsam_preprocess import LITEMEDSAM_PREPROCESSING, preprocess_frames
from services.models.onnx_graphs import onnx_session
from services.models.vae import VAE_CONFIGS
from services.models.vae_codec import VaeCodec

ATOL = 1e-4
C = VAE_CONFIGS["small"]["latent_channels"]  # the seeded small VAE of these tests
IO = {
    "vae_encode": (("frames", [-1, 1, -1, -1]), ("latents", [-1, C, -1, -1])),
    "vae_decode": (("latents", [-1, C, -1, -1]), ("frames", [-1, 1, -1, -1])),
    "image_prior": (("frames", [-1, 3, 256, 256]), ("prior", [-1, 256, 64, 64])),
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model dir, Triton repository) after one `genaug export-onnx --triton-layout`."""
    model_dir = tmp_path_factory.mktemp("models")  # no VAE weights: the seeded small VAE
    out = tmp_path_factory.mktemp("triton")
    argv = ["export-onnx", "--model-dir", str(model_dir), "--out", str(out), "--triton-layout"]
    assert cli.main(argv) == 0
    return model_dir, out


@functools.cache
def _session(path: Path):
    return onnx_session(path)


def _run(path: Path, name: str, x: np.ndarray) -> np.ndarray:
    (inp, _), (outp, _) = IO[name]
    return _session(path).run([outp], {inp: x})[0]


def test_triton_layout(repo: tuple[Path, Path]) -> None:
    _, out = repo
    assert sorted(p.name for p in out.iterdir()) == sorted(IO)
    for name, ((in_name, in_dims), (out_name, out_dims)) in IO.items():
        model_file = out / name / "1" / "model.onnx"
        config = text_format.Parse(
            (out / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        assert (config.name, config.platform, config.max_batch_size) == (
            name,
            "onnxruntime_onnx",
            0,
        )
        assert [(t.name, list(t.dims)) for t in config.input] == [(in_name, in_dims)]
        assert [(t.name, list(t.dims)) for t in config.output] == [(out_name, out_dims)]
        assert config.input[0].data_type == model_config_pb2.TYPE_FP32
        onnx.checker.check_model(str(model_file), full_check=True)
        model = onnx.load(str(model_file), load_external_data=False)
        assert [i.name for i in model.graph.input] == [in_name]
        assert [o.name for o in model.graph.output] == [out_name]
        # The frame axis is symbolic, i.e. dynamic, in the graph itself.
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
        assert {p.key for p in model.metadata_props} >= {"genaug_model", "weights"}


@pytest.mark.parametrize("name", ["vae_encode", "vae_decode"])
def test_vae_parity_with_codec(repo: tuple[Path, Path], name: str) -> None:
    model_dir, out = repo
    codec = VaeCodec(model_dir / "vae", device="cpu", batch_frames=8)
    codec.load()
    rng = np.random.default_rng(0)
    # Batch 1 and 3 (the export traced batch 2), and a second frame size: both axes are dynamic.
    for batch, (h, w) in ((1, (64, 64)), (3, (128, 64))):
        if name == "vae_encode":
            x = rng.uniform(-1, 1, (batch, 1, h, w)).astype(np.float32)
            want = codec.encode(x)
        else:
            x = rng.standard_normal((batch, C, h // 8, w // 8), dtype=np.float32)
            want = codec.decode(x)
        got = _run(out / name / "1" / "model.onnx", name, x)
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= ATOL, (name, batch)


def test_vae_flat_layout_and_check_parity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["export-onnx", "--model-dir", str(tmp_path), "--out", str(tmp_path / "onnx")]
    assert cli.main([*argv, "--models", "vae_encode", "--check-parity"]) == 0
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == ["vae_encode.onnx"]
    lines = [line for line in capsys.readouterr().out.splitlines() if "max abs diff" in line]
    assert len(lines) == 2 and all("(ok," in line for line in lines)


def test_image_prior_parity_with_encoder(repo: tuple[Path, Path]) -> None:
    _, out = repo
    path = out / "image_prior" / "1" / "model.onnx"
    ds = dcmread(get_testdata_file("examples_ybr_color.dcm"))
    frames = np.stack([pixel_array(ds, index=i, as_rgb=False)[..., 0] for i in (0, 1)])
    x = preprocess_frames(frames, LITEMEDSAM_PREPROCESSING)
    # The service path (Python preprocessing + torch network) on one real echo frame (a torch
    # forward costs 2-10 s here, hence one) against Python preprocessing + the ONNX network.
    want = load_image_prior_encoder("litemedsam", device="cpu").encode(frames[:1])
    got = _run(path, "image_prior", x)  # two frames: the export traced one
    assert got.shape == (2, 256, 64, 64)
    assert np.abs(got[:1] - want).max() <= ATOL
    # The second frame's row equals that frame run alone: the frame axis is truly dynamic.
    assert np.abs(got[1:] - _run(path, "image_prior", x[1:])).max() <= 1e-5
