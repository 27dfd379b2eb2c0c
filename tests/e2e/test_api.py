"""The Python API (`clients.api.GenAug`) over real gRPC against the five services with the
bundled models: listing the generators, generating from a reference clip (shape, dtype,
determinism), refusing bad arguments before any generation, and the batch job."""

from __future__ import annotations

import numpy as np
import pytest

from clients import GenAug, Generator
from clients.local_cluster import available_services
from genaug.errors import InvalidArgument, NotFound
from services.data import layout
from services.data.phantoms import PHANTOM_NAME, ensure_bundled_dataset
from tests.e2e.cluster import NEEDED

STEPS = 2

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not set(available_services()) >= NEEDED,
        reason=f"needs all five services, missing {sorted(NEEDED - set(available_services()))}",
    ),
]


@pytest.fixture(scope="module")
def targets(two_sampler_cluster):
    return two_sampler_cluster[0].targets()


@pytest.fixture(scope="module")
def genaug(targets):
    """Conditions computed by the client through the encoder and the motion extractor."""
    with GenAug(
        targets["sampler"],
        encoder=targets["condition_encoder"],
        motion=targets["motion_extractor"],
        filter=targets["filter"],
    ) as client:
        yield client


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return ensure_bundled_dataset(tmp_path_factory.mktemp("phantom"))


@pytest.fixture(scope="module")
def reference(data):
    item = layout.load_dataset(data, PHANTOM_NAME, "train").items[0]
    return item, layout.read_clip(item.path)


def test_generators_lists_the_bundled_generator(genaug):
    (generator,) = genaug.generators()
    assert isinstance(generator, Generator)
    assert generator.name == "phantom" and generator.is_default
    assert generator.class_names == ("DCM", "HCM", "NOR")
    assert (generator.num_frames, generator.height, generator.width) == (8, 64, 64)
    measured_with = generator.card["figures"]["measured_with"]
    assert (measured_with["solver"], measured_with["steps"]) == ("dpmsolver++", 15)  # sampling.json
    assert genaug.generator() == genaug.generator("phantom") == generator


def test_generate_returns_uint8_clips_deterministic_for_a_seed(genaug, targets, reference):
    item, frames = reference
    # One request at a time: clips batched together may differ by float rounding.
    kwargs = dict(seed=5, steps=STEPS, text=item.text, concurrency=1)
    clips = genaug.generate(frames, item.cls, n=2, **kwargs)
    assert clips.shape == (2, 8, 64, 64) and clips.dtype == np.uint8
    assert not np.array_equal(clips[0], clips[1])  # seeds 5 and 6
    # A client without the condition services: the sampler fetches the conditions itself, so
    # the requests differ and are computed again, to the same frames.
    with GenAug(targets["sampler"]) as plain:
        again = plain.generate(frames, item.cls, n=2, **kwargs)
        (second,) = plain.generate(frames, item.cls, **{**kwargs, "seed": 6})
    np.testing.assert_array_equal(again, clips)
    np.testing.assert_array_equal(second, clips[1])  # clip i gets seed + i


def test_generate_refuses_bad_arguments_before_generating(genaug, reference, monkeypatch):
    item, frames = reference

    def no_generation(*args, **kwargs):
        raise AssertionError("Generate was called")

    monkeypatch.setattr(genaug.sampler, "generate", no_generation)
    with pytest.raises(InvalidArgument) as info:
        genaug.generate(frames, "ASD", steps=STEPS)
    assert str(info.value) == (
        "class_name: 'ASD' is not a class of generator 'phantom' (its classes: DCM, HCM, NOR)"
    )
    with pytest.raises(NotFound, match=r"no generator 'nope' \(phantom\)"):
        genaug.generate(frames, item.cls, model="nope")
    for bad in (frames.astype(np.float32), frames[0], frames.tolist()):
        with pytest.raises(InvalidArgument, match="^reference_clip: must be"):
            genaug.generate(bad, item.cls)
    with pytest.raises(InvalidArgument, match="^n: "):
        genaug.generate(frames, item.cls, n=0)


def test_augment_runs_the_batch_job_and_resumes(genaug, data, tmp_path):
    out = tmp_path / "aug"
    with pytest.raises(TypeError, match="sampler come from the client"):
        genaug.augment(data, out, per_class=1, sampler=["elsewhere:1"])
    options = dict(name=PHANTOM_NAME, per_class=1, steps=STEPS, concurrency=3, report=False)
    result = genaug.augment(data, out, **options)
    assert result.generator == "phantom" and result.generated_now == 3
    assert len(result.verdicts) == 3  # filtered through the filter service
    kept = sorted(item.cls for item in layout.load_dataset(out, PHANTOM_NAME, "train"))
    assert kept == sorted(r["cls"] for r in result.written.values())
    assert result.metadata_records == len(kept)
    again = genaug.augment(data, out, **options)  # resumed: nothing left to generate
    assert again.generated_now == 0 and again.written == result.written
