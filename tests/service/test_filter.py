"""The filter over real gRPC: FilterPool verdicts, open inference, bad input, provenance."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton

from clients.rpc.channel import ChannelSettings, open_channel
from clients.rpc.filter import ClassBand, FilterClient, PoolClip
from clients.rpc.health import check
from genaug import wire
from genaug.deadline import Deadline
from genaug.errors import DeadlineExceeded
from genaug.v1 import filter_pb2 as pb
from genaug.v1 import filter_pb2_grpc
from services.common.config import ServerConfig
from services.filter import pool
from services.filter.__main__ import build_server
from services.filter.scorer import PoolScorer
from services.models.classifier import VideoClassifier, VideoClassifierConfig
from tests.service.conftest import running

T, S = 8, 64


def _moving(phase: float, speed: float, fx: float, fy: float) -> np.ndarray:
    """A smooth pattern drifting `speed` px per frame: a coherent clip in [-1, 1]."""
    y, x = np.mgrid[0:S, 0:S].astype(np.float32)
    frames = [np.sin((x + speed * t + phase) / fx) * np.cos((y + phase) / fy) for t in range(T)]
    return (0.9 * np.stack(frames)[:, None]).astype(np.float32)


def _pool() -> list[tuple[str, str, int, np.ndarray]]:
    """(clip_id, case_id, label, clip): four kinds of bad clip among coherent ones."""
    rng = np.random.default_rng(0)
    # One drift speed: VAE-Seq falls with speed, and the coherent clips must form one group.
    good = [_moving(i * 1.7, 2.0, 3 + 0.3 * i, 4 + 0.2 * i) for i in range(6)]
    return [
        ("a-good0", "a", 0, good[0]),
        ("a-good1", "a", 0, good[1]),
        ("a-static", "a", 0, np.repeat(good[2][:1], T, axis=0)),
        ("a-noise", "a", 0, rng.uniform(-1, 1, (T, 1, S, S)).astype(np.float32)),
        ("a-copy", "a", 0, good[1].copy()),
        ("a-wrong-class", "a", 1, good[2]),
        ("a-good3", "a", 0, good[3]),
        ("b-good4", "b", 0, good[4]),
        ("b-good5", "b", 0, good[5]),
    ]


def _requests(clips, options=None):
    yield pb.FilterPoolRequest(options=options or pb.FilterOptions())
    for clip_id, case_id, label, clip in clips:
        message = pb.PoolClip(clip_id=clip_id, case_id=case_id, label=label)
        wire.to_proto(clip, message.clip)
        yield pb.FilterPoolRequest(clip=message)


@pytest.fixture(scope="module")
def filter_server(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("models")
    # A "trained" classifier that is sure every clip is class 0 (head weights 0, bias +-5): the
    # clip whose intended label is 1 has a high cross-entropy, deterministically.
    classifier = VideoClassifier(VideoClassifierConfig(num_classes=2, widths=(8, 16), groups=4))
    with torch.no_grad():
        classifier.head.weight.zero_()
        classifier.head.bias.copy_(torch.tensor([5.0, -5.0]))
    classifier.save_pretrained(model_dir / "classifier")
    config = ServerConfig(
        service="filter", port=0, metrics_port=None, model_dir=model_dir, device="cpu"
    )
    with running(build_server(config, max_pool_clips=16)) as server:
        yield server


@pytest.fixture
def stub(filter_server):
    target = f"127.0.0.1:{filter_server.port}"
    with open_channel(target, ChannelSettings(retry_attempts=1)) as channel:
        yield filter_pb2_grpc.FilterStub(channel), channel


@pytest.fixture(scope="module")
def pool_reply(filter_server):
    target = f"127.0.0.1:{filter_server.port}"
    with open_channel(target, ChannelSettings(retry_attempts=1)) as channel:
        return filter_pb2_grpc.FilterStub(channel).FilterPool(_requests(_pool()), timeout=60)


def test_pool_verdicts_name_the_level_that_rejects(pool_reply):
    verdicts = {v.clip_id: v for v in pool_reply.verdicts}
    assert [v.clip_id for v in pool_reply.verdicts] == [c[0] for c in _pool()]
    low, high = pool_reply.vae_seq_low, pool_reply.vae_seq_high
    assert 0 < low < high < 100

    static = verdicts["a-static"]
    assert not static.keep and static.vae_seq == pytest.approx(100, abs=1e-3)
    assert static.reasons[0].startswith("sequential: vae_seq 100.0 above band")
    assert static.reasons[0].endswith("(static)")
    noise = verdicts["a-noise"]
    assert not noise.keep and noise.vae_seq < low
    assert noise.reasons[0].startswith("sequential: vae_seq") and "(incoherent)" in noise.reasons[0]
    wrong = verdicts["a-wrong-class"]
    assert not wrong.keep and wrong.cross_entropy > 5
    assert wrong.reasons[0].startswith(f"semantic: cross-entropy {wrong.cross_entropy:.3g} > 1.0")
    copy = verdicts["a-copy"]
    assert not copy.keep and copy.max_duplicate_similarity == pytest.approx(1, abs=1e-5)
    assert copy.reasons == ["duplicate: near-duplicate of a-good1 (cosine 1.000 >= 0.98)"]
    for clip_id in ("a-good0", "a-good1", "a-good3", "b-good4", "b-good5"):
        v = verdicts[clip_id]
        assert v.keep and list(v.reasons) == [] and low <= v.vae_seq <= high, v
        assert v.cross_entropy < 1e-3 and v.max_duplicate_similarity < 0.98


def _infer(server, model: str, clips: np.ndarray, output: str) -> np.ndarray:
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    inp = triton.InferInput("clips", list(clips.shape), "FP32")
    inp.set_data_from_numpy(clips)
    return client.infer(model, [inp]).as_numpy(output)


def test_tritonclient_models_equal_the_typed_scores(filter_server, pool_reply):
    clips = _pool()[:4]
    batch = np.stack([c[3] for c in clips])
    scores = _infer(filter_server, "vae_seq", batch, "score")
    logits = _infer(filter_server, "classifier", batch, "logits")
    assert scores.shape == (4,) and logits.shape == (4, 2)
    verdicts = pool_reply.verdicts[:4]
    np.testing.assert_array_equal(scores, np.float32([v.vae_seq for v in verdicts]))
    ce = pool.cross_entropy(logits, [c[2] for c in clips]).astype(np.float32)
    np.testing.assert_array_equal(ce, np.float32([v.cross_entropy for v in verdicts]))


def test_metadata_reports_the_weights(filter_server):
    client = triton.InferenceServerClient(f"127.0.0.1:{filter_server.port}")
    params = client.get_model_config("classifier", as_json=True)["config"]["parameters"]
    assert params["weights"]["string_value"] == "trained"
    assert params["num_classes"]["string_value"] == "2"
    params = client.get_model_config("vae_seq", as_json=True)["config"]["parameters"]
    assert params["weights"]["string_value"] == "seeded-initialisation"
    meta = client.get_model_metadata("vae_seq", as_json=True)
    assert meta["inputs"][0]["shape"] == ["-1", "-1", "1", "-1", "-1"]


def test_a_small_pool_says_the_band_was_not_applied(stub):
    clips = [c for c in _pool() if c[0] in ("a-good0", "a-good1", "b-good4")]
    reply = stub[0].FilterPool(_requests(clips, pb.FilterOptions(alpha=2)), timeout=60)
    assert (reply.vae_seq_low, reply.vae_seq_high) == (-math.inf, math.inf)
    for v in reply.verdicts:
        assert v.keep and v.reasons[0].startswith("note: sequential band not applied: 3 distinct")


def test_class_scope_fits_and_reports_one_band_per_class(stub, pool_reply):
    options = pb.FilterOptions(sequential_band_scope=pb.FilterOptions.BAND_SCOPE_CLASS)
    reply = stub[0].FilterPool(_requests(_pool(), options), timeout=60)
    # The pool-wide band is still fitted and reported, as with the default (pool) scope.
    pool_band = (pool_reply.vae_seq_low, pool_reply.vae_seq_high)
    assert (reply.vae_seq_low, reply.vae_seq_high) == pool_band
    assert [b.label for b in reply.class_bands] == [0, 1]
    zero, one = reply.class_bands
    assert zero.applied and 0 < zero.low < zero.high < 100 and zero.note == ""
    # Class 1 is the single wrong-class clip: too few distinct values, no band, a note.
    assert not one.applied and (one.low, one.high) == (-math.inf, math.inf)
    assert one.note.startswith("note: sequential band of class 1 not applied: 1 distinct")
    verdicts = {v.clip_id: v for v in reply.verdicts}
    static, noise = verdicts["a-static"], verdicts["a-noise"]
    assert not static.keep and static.reasons[0].startswith("sequential: vae_seq 100.0 above class")
    assert f"above class 0 band [{zero.low:.1f}, {zero.high:.1f}] (static)" in static.reasons[0]
    assert not noise.keep and noise.vae_seq < zero.low
    assert " below class 0 band [" in noise.reasons[0] and "(incoherent)" in noise.reasons[0]
    wrong = verdicts["a-wrong-class"]
    assert not wrong.keep and wrong.reasons[0].startswith("semantic:")
    assert list(wrong.reasons[1:]) == [one.note]
    for clip_id in ("a-good0", "a-good1", "a-good3", "b-good4", "b-good5"):
        v = verdicts[clip_id]
        assert v.keep and list(v.reasons) == [] and zero.low <= v.vae_seq <= zero.high, v

    # The typed client sets the same option from band_scope="class" and returns the bands.
    clips = [PoolClip(*c) for c in _pool()]
    result = FilterClient(stub[1]).filter_pool(clips, band_scope="class", timeout=60)
    assert result.class_bands == (
        ClassBand(0, zero.low, zero.high, True, ""),
        ClassBand(1, -math.inf, math.inf, False, one.note),
    )
    assert [v.keep for v in result.verdicts] == [v.keep for v in reply.verdicts]
    assert FilterClient(stub[1]).filter_pool(clips[:3], timeout=60).class_bands == ()


def _clip_request(clip_id="x", case_id="c", label=0, clip=None):
    message = pb.PoolClip(clip_id=clip_id, case_id=case_id, label=label)
    wire.to_proto(_moving(0, 1, 3, 4) if clip is None else clip, message.clip)
    return pb.FilterPoolRequest(clip=message)


OPTIONS = pb.FilterPoolRequest(options=pb.FilterOptions())
GOOD = _clip_request()


@pytest.mark.parametrize(
    "messages, field",
    [
        ([], "requests: the stream is empty"),
        ([GOOD], "requests[0].options: the first message must be FilterOptions"),
        ([OPTIONS], "clips: the pool has no clips"),
        ([OPTIONS, GOOD, OPTIONS], "requests[2]: after the options"),
        (
            [pb.FilterPoolRequest(options=pb.FilterOptions(duplicate_threshold=98)), GOOD],
            "options.duplicate_threshold: is 98.0",
        ),
        ([pb.FilterPoolRequest(options=pb.FilterOptions(alpha=-1))], "options.alpha"),
        (
            [pb.FilterPoolRequest(options=pb.FilterOptions(sequential_band_scope=7)), GOOD],
            "options.sequential_band_scope: is 7",
        ),
        ([OPTIONS, GOOD, _clip_request("x")], "clips[1].clip_id: 'x' was already used"),
        ([OPTIONS, _clip_request(clip_id="")], "clips[0].clip_id: is empty"),
        ([OPTIONS, _clip_request(case_id="")], "clips[0].case_id: is empty"),
        ([OPTIONS, _clip_request(label=2)], "clips[0].label: is 2; the classifier has 2"),
        (
            [OPTIONS, GOOD, _clip_request("y", clip=np.zeros((T, 1, 32, 32), np.float32))],
            "clips[1].clip.shape: is [8, 1, 32, 32]; every clip of a pool must match",
        ),
        (
            [OPTIONS, _clip_request(clip=np.zeros((1, 1, S, S), np.float32))],
            "clips[0].clip.shape: has 1 frame(s)",
        ),
        (
            [OPTIONS, _clip_request(clip=np.zeros((T, 1, 60, 64), np.float32))],
            "clips[0].clip.shape: H and W (60x64)",
        ),
        (
            [OPTIONS, _clip_request(clip=np.zeros((T, 1, S, S), np.float64))],
            "clips[0].clip.dtype: is float64",
        ),
        (
            [OPTIONS, _clip_request(clip=np.full((T, 1, S, S), 255, np.float32))],
            "clips[0].clip: values must lie in [-1, 1]",
        ),
        ([OPTIONS] + [_clip_request(f"c{i}") for i in range(17)], "clips: the pool has more"),
    ],
    ids=[
        "empty",
        "no-options",
        "no-clips",
        "late-options",
        "threshold-98",
        "negative-alpha",
        "band-scope-7",
        "same-id",
        "no-id",
        "no-case",
        "label",
        "shape-mismatch",
        "one-frame",
        "not-x8",
        "float64",
        "range",
        "too-many",
    ],
)
def test_bad_pool_is_invalid_argument(stub, messages, field):
    with pytest.raises(grpc.RpcError) as info:
        stub[0].FilterPool(iter(messages), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field), info.value.details()
    assert check(stub[1], "filter") == "SERVING"


def test_bad_tritonclient_input_is_invalid_argument(filter_server, stub):
    with pytest.raises(triton.InferenceServerException) as info:
        _infer(filter_server, "vae_seq", np.zeros((0, T, 1, S, S), np.float32), "score")
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert info.value.message().startswith("inputs[clips].shape")
    with pytest.raises(triton.InferenceServerException) as info:
        _infer(filter_server, "classifier", np.full((1, T, 1, S, S), 3, np.float32), "logits")
    assert info.value.message().startswith("inputs[clips]: values must lie in [-1, 1]")
    assert check(stub[1], "filter") == "SERVING"


class _ExpiresAfter(Deadline):
    """A deadline that passes after `checks` calls to `check`."""

    def __init__(self, checks: int):
        super().__init__()
        self.left = checks

    def check(self, stage: str) -> None:
        self.left -= 1
        if self.left < 0:
            raise DeadlineExceeded(f"deadline exceeded during {stage}")


def test_the_deadline_is_checked_between_forwards(tmp_path):
    scorer = PoolScorer(tmp_path, device="cpu", batch_frames=2)
    scorer.load()
    clip = _moving(0, 1, 3, 4)[:4]
    with pytest.raises(DeadlineExceeded, match="VAE-Seq"):
        scorer.score_clip(clip, _ExpiresAfter(1))  # the second of two VAE forwards
    with pytest.raises(DeadlineExceeded, match="classifier"):
        scorer.score_clip(clip, _ExpiresAfter(2))
    assert scorer.info()["classifier_weights"] == "seeded-initialisation"
