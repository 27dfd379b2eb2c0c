"""The filter's reference clips over real gRPC: the band from real VAE-Seq, the memorisation
level, nearest-reference distances, and bad references as INVALID_ARGUMENT."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from clients.rpc.channel import ChannelSettings, open_channel
from clients.rpc.errors import GenAugError
from clients.rpc.filter import FilterClient, PoolClip
from services.common.config import ServerConfig
from services.filter.__main__ import build_server
from services.models.classifier import VideoClassifier, VideoClassifierConfig
from tests.service.conftest import running

T, S = 8, 32


def _moving(phase: float, speed: float, scale: float) -> np.ndarray:
    """A smooth pattern drifting `speed` px per frame: a coherent clip in [-1, 1]."""
    y, x = np.mgrid[0:S, 0:S].astype(np.float32)
    frames = [np.sin((x + speed * t + phase) / scale) * np.cos((y + phase) / 4) for t in range(T)]
    return (0.9 * np.stack(frames)[:, None]).astype(np.float32)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("models")
    classifier = VideoClassifier(VideoClassifierConfig(num_classes=2, widths=(8, 16), groups=4))
    classifier.save_pretrained(model_dir / "classifier")
    config = ServerConfig(
        service="filter", port=0, metrics_port=None, model_dir=model_dir, device="cpu"
    )
    with running(build_server(config, max_pool_clips=32)) as server:
        target = f"127.0.0.1:{server.port}"
        with open_channel(target, ChannelSettings(retry_attempts=1)) as channel:
            yield FilterClient(channel)


def _references() -> list[PoolClip]:
    """Six real clips of three patients (two similar clips each), all class 0."""
    refs = []
    for patient in range(3):
        for k in range(2):
            clip = _moving(2.5 * patient + 0.3 * k, 1.0 + 0.1 * patient, 3.0 + patient)
            refs.append(PoolClip(f"p{patient}-{k}", f"p{patient}", 0, clip))
    return refs


def test_the_memorisation_level_rejects_a_copy_of_a_training_clip(client):
    refs = _references()
    rng = np.random.default_rng(0)
    copy = np.clip(refs[3].clip + rng.normal(0, 0.01, refs[3].clip.shape), -1, 1)
    pool = [
        PoolClip("copy", "case-a", 0, copy.astype(np.float32)),
        PoolClip("novel", "case-b", 0, _moving(11.0, 1.4, 3.6)),
    ]
    kept = client.filter_pool(pool, skip_semantic=True, skip_sequential=True, references=refs)
    # Without the level, every clip is kept but gets its nearest training clip.
    assert [v.keep for v in kept.verdicts] == [True, True] and kept.memorisation_threshold == -1
    assert kept.verdicts[0].nearest_reference_id == "p1-1"
    assert kept.verdicts[0].nearest_reference_distance < 0.02
    assert kept.verdicts[1].nearest_reference_distance > 0.1
    result = client.filter_pool(
        pool, skip_semantic=True, skip_sequential=True, references=refs, check_memorisation=True
    )
    copy_v, novel_v = result.verdicts
    assert 0.02 < result.memorisation_threshold < novel_v.nearest_reference_distance
    assert not copy_v.keep and copy_v.rejected_by == "memorisation"
    assert copy_v.reasons[0].startswith("memorisation: ") and "p1-1" in copy_v.reasons[0]
    assert novel_v.keep
    without = client.filter_pool(pool, skip_semantic=True, skip_sequential=True)
    assert [v.nearest_reference_distance for v in without.verdicts] == [-1.0, -1.0]


def test_the_reference_band_comes_from_the_real_clips_vae_seq(client):
    refs = _references()
    static = np.repeat(refs[0].clip[:1], T, axis=0)  # VAE-Seq 100: above any real clip
    pool = [
        PoolClip("like-real", "c", 0, _moving(7.0, 1.1, 3.5)),
        PoolClip("static", "c", 0, static),
    ]
    result = client.filter_pool(pool, skip_semantic=True, band_scope="reference", references=refs)
    (band,) = result.class_bands
    real = client.filter_pool(refs, skip_semantic=True, skip_sequential=True, skip_duplicates=True)
    values = [v.vae_seq for v in real.verdicts]
    assert band.applied
    assert band.low == pytest.approx(np.quantile(values, 0.05), abs=1e-3)
    assert band.high == pytest.approx(np.quantile(values, 0.95), abs=1e-3)
    like, still = result.verdicts
    assert not still.keep and still.rejected_by == "sequential"
    assert "above class 0 band" in still.reasons[0]
    assert like.keep == (band.low <= like.vae_seq <= band.high)


def _one_case() -> list[PoolClip]:
    return [PoolClip(r.clip_id, "same", 0, r.clip) for r in _references()]


@pytest.mark.parametrize(
    "refs, kwargs, field",
    [
        ([], {"band_scope": "reference"}, "references"),
        ([], {"check_memorisation": True}, "references"),
        (_one_case(), {"check_memorisation": True}, "references"),
        (
            _references(),
            {"band_scope": "reference", "reference_band_quantile": 0.7},
            "options.reference_band_quantile",
        ),
        (
            _references()[:1] + [PoolClip("small", "p", 0, np.zeros((T, 1, 16, 16), np.float32))],
            {},
            "references[1].clip.shape",
        ),
        ([PoolClip("p", "p", 5, _moving(0.0, 1.0, 3.0))], {}, "references[0].label"),
    ],
)
def test_bad_references_are_invalid_argument(client, refs, kwargs, field):
    pool = [PoolClip("x", "c", 0, _moving(0.0, 1.0, 3.0))]
    with pytest.raises(GenAugError) as info:
        client.filter_pool(pool, references=refs, **kwargs)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details.startswith(field), info.value.details
