"""The condition encoder over real gRPC: typed RPCs, open inference, bad input, provenance.

LiteMedSAM takes ~1.4 s per frame on a small CPU: the server warms up on one frame and the
image-prior tests encode two more (one per API).
"""

from __future__ import annotations

import argparse

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from clients.rpc.channel import ChannelSettings, open_channel
from clients.rpc.health import check
from genaug import wire
from genaug.deadline import Deadline
from genaug.errors import DeadlineExceeded
from genaug.v1 import condition_encoder_pb2 as pb
from genaug.v1 import condition_encoder_pb2_grpc
from services.common.config import ServerConfig
from services.condition_encoder.__main__ import build_server
from services.condition_encoder.encoder import PROJECTION_FILE, ConditionEncoder, EncoderLimits
from services.models.text import TextProjection
from tests.service.conftest import running

PROJECTION_DIM = 96
CAPTIONS = ["Apical four-chamber view, normal left ventricle.", ""]


@pytest.fixture(scope="module")
def encoder_server(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("models")
    (model_dir / PROJECTION_FILE).parent.mkdir()
    TextProjection(384, PROJECTION_DIM).save(model_dir / PROJECTION_FILE)
    config = ServerConfig(
        service="condition_encoder", port=0, metrics_port=None, model_dir=model_dir, device="cpu"
    )
    limits = EncoderLimits(max_frames=4, max_texts=8, max_text_bytes=256)
    with running(build_server(config, limits=limits)) as server:
        yield server


@pytest.fixture
def stub(encoder_server):
    target = f"127.0.0.1:{encoder_server.port}"
    with open_channel(target, ChannelSettings(retry_attempts=1)) as channel:
        yield condition_encoder_pb2_grpc.ConditionEncoderStub(channel), channel


@pytest.fixture
def tc(encoder_server):
    return triton.InferenceServerClient(f"127.0.0.1:{encoder_server.port}")


def _frame() -> np.ndarray:
    # 256x256: LiteMedSAM's input size, so no resize and UINT8 / FP32 preprocess identically.
    y, x = np.mgrid[0:256, 0:256]
    disc = ((x - 120) ** 2 + (y - 140) ** 2 < 60**2) * 150
    return (40 + disc + (x % 16) * 3).astype(np.uint8)[None]


def test_image_prior_typed_fp32_equals_tritonclient_uint8(stub, tc):
    frames = _frame()
    request = pb.ImagePriorRequest(frames=wire.to_proto(frames.astype(np.float32)))
    typed = wire.from_proto(stub[0].EncodeImagePrior(request, timeout=60).prior, "prior")
    assert typed.shape == (1, 256, 64, 64) and typed.dtype == np.float32
    assert np.isfinite(typed).all() and typed.std() > 0

    assert tc.is_model_ready("image_prior")
    inp = triton.InferInput("frames", list(frames.shape), "UINT8")
    inp.set_data_from_numpy(frames)
    np.testing.assert_array_equal(tc.infer("image_prior", [inp]).as_numpy("prior"), typed)


def test_text_typed_equals_tritonclient(stub, tc):
    typed = stub[0].EncodeText(pb.TextRequest(texts=CAPTIONS), timeout=30)
    embedding = wire.from_proto(typed.embedding, "embedding")
    assert embedding.shape == (2, 32, PROJECTION_DIM) and embedding.dtype == np.float32
    assert np.abs(embedding[0] - embedding[1]).mean() > 1e-4

    inp = triton.InferInput("text", [len(CAPTIONS)], "BYTES")
    inp.set_data_from_numpy(np.array([c.encode() for c in CAPTIONS], dtype=object))
    np.testing.assert_array_equal(
        tc.infer("text_embedding", [inp]).as_numpy("embedding"), embedding
    )


def test_metadata_reports_the_weights(tc):
    text = tc.get_model_config("text_embedding", as_json=True)["config"]["parameters"]
    assert text["projection"]["string_value"] == "trained"
    assert text["weights"]["string_value"] == "trained"
    assert text["embedding_dim"]["string_value"] == str(PROJECTION_DIM)
    assert text["text_encoder"]["string_value"] == "minilm"
    image = tc.get_model_config("image_prior", as_json=True)["config"]["parameters"]
    assert image["image_encoder"]["string_value"] == "litemedsam"
    assert image["checkpoint"]["string_value"].endswith("lite_medsam.pth")
    assert image["runtime"]["string_value"] == "onnxruntime"  # "auto" on the CPU
    meta = tc.get_model_metadata("image_prior", as_json=True)
    assert meta["inputs"][0]["datatype"] == "UINT8"
    assert meta["outputs"][0]["shape"] == ["-1", "256", "64", "64"]


@pytest.mark.parametrize(
    "rpc, message, field",
    [
        ("EncodeImagePrior", pb.ImagePriorRequest(), "frames: is not set"),
        (
            "EncodeImagePrior",
            pb.ImagePriorRequest(frames=wire.to_proto(np.zeros((0, 64, 64), np.uint8))),
            "frames.shape: has no frames",
        ),
        (
            "EncodeImagePrior",
            pb.ImagePriorRequest(frames=wire.to_proto(np.zeros((5, 16, 16), np.uint8))),
            "frames.shape: has 5 frames, over the limit of 4",
        ),
        (
            "EncodeImagePrior",
            pb.ImagePriorRequest(frames=wire.to_proto(np.zeros((1, 8000, 8), np.uint8))),
            "frames.shape: frame size 8000x8",
        ),
        (
            "EncodeImagePrior",
            pb.ImagePriorRequest(frames=wire.to_proto(np.zeros((1, 64, 64), np.int16))),
            "frames.dtype: is int16",
        ),
        (
            "EncodeImagePrior",
            pb.ImagePriorRequest(frames=wire.to_proto(np.full((1, 16, 16), np.nan, np.float32))),
            "frames: contains NaN",
        ),
        ("EncodeText", pb.TextRequest(), "texts: has no texts"),
        ("EncodeText", pb.TextRequest(texts=["x"] * 9), "texts: has 9 texts, over the limit"),
        ("EncodeText", pb.TextRequest(texts=["ok", "y" * 300]), "texts[1]: is 300 bytes"),
    ],
    ids=[
        "unset",
        "no-frames",
        "too-many",
        "absurd-size",
        "int16",
        "nan",
        "no-texts",
        "9-texts",
        "long-text",
    ],
)
def test_bad_typed_input_is_invalid_argument(stub, rpc, message, field):
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub[0], rpc)(message, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field), info.value.details()
    assert check(stub[1], "condition_encoder") == "SERVING"


def _triton_error(call) -> triton.InferenceServerException:
    with pytest.raises(triton.InferenceServerException) as info:
        call()
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    return info.value


def test_bad_tritonclient_input_is_invalid_argument(tc, stub):
    text = triton.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([b"fine", b"\xff\xfebad"], dtype=object))
    error = _triton_error(lambda: tc.infer("text_embedding", [text]))
    assert error.message().startswith("inputs[text][1]: is not valid UTF-8")

    frames = triton.InferInput("frames", [1, 16, 16], "FP64")
    frames.set_data_from_numpy(np.zeros((1, 16, 16), np.float64))
    error = _triton_error(lambda: tc.infer("image_prior", [frames]))
    assert error.message().startswith("inputs[frames].datatype")

    frames = triton.InferInput("frames", [2, 4, 4], "UINT8")
    frames.set_data_from_numpy(np.zeros((2, 4, 4), np.uint8))
    error = _triton_error(lambda: tc.infer("image_prior", [frames]))
    assert error.message().startswith("inputs[frames].shape: frame size 4x4")
    assert tc.is_server_ready() and check(stub[1], "condition_encoder") == "SERVING"


def test_text_projection_provenance_without_a_trained_file(tmp_path):
    raw = ConditionEncoder(tmp_path, device="cpu")
    raw.load_text()
    assert raw.encode_text(["a"]).shape == (1, 32, 384)
    assert raw.text_info()["projection"] == "none" and raw.text_info()["weights"] == "pretrained"
    seeded = ConditionEncoder(tmp_path, text_dim=48, device="cpu")
    seeded.load_text()
    assert seeded.encode_text(["a"]).shape == (1, 32, 48)
    assert seeded.text_info()["weights"] == "seeded-initialisation"


def test_the_deadline_is_checked_between_batches(tmp_path):
    encoder = ConditionEncoder(tmp_path, device="cpu", text_batch=1)
    encoder.load_text()
    calls = []

    class ExpiresAfterOne(Deadline):
        def check(self, stage: str) -> None:
            calls.append(stage)
            if len(calls) > 1:
                raise DeadlineExceeded(f"deadline exceeded during {stage}")

    with pytest.raises(DeadlineExceeded, match="text embedding"):
        encoder.encode_text(["one", "two", "three"], ExpiresAfterOne())
    assert calls == ["text embedding", "text embedding"]  # stopped before the second batch
    with pytest.raises(DeadlineExceeded):
        encoder.encode_text(["late"], Deadline(timeout=-1))


def _counting_text_encoder(encoder: ConditionEncoder) -> list[list[str]]:
    """Record the captions of every forward the encoder's (real) text model runs."""
    forwards: list[list[str]] = []
    real = encoder.text.encode

    def encode(texts):
        forwards.append(list(texts))
        return real(texts)

    encoder.text.encode = encode
    return forwards


def test_a_repeated_caption_is_embedded_once(tmp_path):
    encoder = ConditionEncoder(tmp_path, device="cpu")
    encoder.load_text()
    forwards = _counting_text_encoder(encoder)
    uncached = ConditionEncoder(tmp_path, device="cpu", text_cache_entries=0)
    uncached.load_text()

    first = encoder.encode_text(["a", "b", "a"])
    second = encoder.encode_text(["b", "c"])
    assert forwards == [["a", "b"], ["c"]]  # unique captions only, and each only once
    np.testing.assert_array_equal(first[0], first[2])
    np.testing.assert_array_equal(second[0], first[1])
    np.testing.assert_allclose(second, uncached.encode_text(["b", "c"]), atol=1e-5)
    assert second.flags.writeable  # the caller's own array, not the cache's
    second[:] = 0
    np.testing.assert_array_equal(encoder.encode_text(["b"])[0], first[1])


def test_the_text_cache_keeps_within_its_bytes(tmp_path):
    one = 32 * 384 * 4  # a MiniLM caption's (32, 384) float32 embedding
    encoder = ConditionEncoder(tmp_path, device="cpu", text_cache_bytes=one)
    encoder.load_text()
    forwards = _counting_text_encoder(encoder)
    encoder.encode_text(["a", "b"])
    encoder.encode_text(["b"])  # the most recent one is kept
    encoder.encode_text(["a"])  # the older one was evicted: computed again
    assert forwards == [["a", "b"], ["a"]]


def test_the_text_cache_size_is_a_flag():
    from services.condition_encoder.__main__ import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--text-cache-mib", "0"]).text_cache_mib == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["--text-cache-mib", "-1"])
