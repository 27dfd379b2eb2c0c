"""`genaug augment` against the generator's card: class names resolved to the generator's ids
(exactly, or through --class-map), unknown classes and out-of-domain datasets refused."""

from __future__ import annotations

import json

import pytest

from clients.augment.job import run_job
from clients.augment.preflight import (
    Generator,
    Refused,
    choose_generator,
    domain_mismatches,
    load_class_map,
    plan_generator,
    resolve_classes,
)
from clients.augment.report import summary_lines
from genaug.v1 import sampler_pb2 as pb
from services.data import layout
from tests.unit.augment_support import (
    NAME,
    FakeFilter,
    FakePool,
    FakeSampler,
    options,
    tiny_dataset,
)

# pickle.dumps({"B": "NOR"}), written out: the project imports no pickle, not even in tests.
PICKLED_MAP = b"\x80\x04\x95\x0e\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01B\x94\x8c\x03NOR\x94s."

PHANTOM = Generator("phantom", ("DCM", "HCM", "NOR"), num_frames=8, height=64, width=64)


def test_ids_come_from_the_generator_order_not_from_sorting_the_dataset():
    assert resolve_classes(["DCM", "NOR"], PHANTOM) == {"DCM": 0, "NOR": 2}


def test_an_unknown_class_is_refused_naming_both_lists():
    with pytest.raises(Refused) as info:
        resolve_classes(["B", "DCM", "HCM"], PHANTOM)
    message = str(info.value)
    assert message.startswith(
        "dataset class 'B' is not a class of generator 'phantom' (its classes: DCM, HCM, NOR; "
        "the dataset's: B, DCM, HCM); map names with --class-map FILE"
    )


def test_a_class_map_maps_names_explicitly():
    assert resolve_classes(["B", "DCM"], PHANTOM, {"B": "NOR"}) == {"B": 2, "DCM": 0}
    with pytest.raises(Refused, match="maps 'B' to 'XYZ'.*its classes: DCM, HCM, NOR"):
        resolve_classes(["B"], PHANTOM, {"B": "XYZ"})
    with pytest.raises(Refused, match="share a class"):
        resolve_classes(["B", "NOR"], PHANTOM, {"B": "NOR"})


def test_a_class_map_file_is_a_json_object_of_names_never_pickle(tmp_path):
    good = tmp_path / "map.json"
    good.write_text('{"B": "NOR"}')
    assert load_class_map(good) == {"B": "NOR"}
    for name, data in (
        ("list.json", b'["B", "NOR"]'),
        ("ints.json", b'{"B": 2}'),
        ("map.pkl", PICKLED_MAP),
    ):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(Refused, match="--class-map"):
            load_class_map(tmp_path / name)


def _info(name, classes, default=False):
    return pb.GeneratorInfo(name=name, class_names=classes, is_default=default)


def test_the_generator_is_the_named_one_or_the_default():
    listing = {"a:1": [_info("phantom", ["DCM", "HCM", "NOR"], True), _info("echo", ["B"])]}
    assert choose_generator(listing, None).name == "phantom"
    assert choose_generator(listing, "echo").class_names == ("B",)
    with pytest.raises(Refused, match=r"--model 'x': sampler a:1 .*phantom, echo"):
        choose_generator(listing, "x")
    other = {**listing, "b:2": [_info("phantom", ["NOR", "HCM", "DCM"], True)]}
    with pytest.raises(Refused, match="disagree"):
        choose_generator(other, None)


def test_frame_count_size_and_modality_are_compared_with_the_card():
    assert domain_mismatches(PHANTOM, (8, 64, 64)) == []
    found = domain_mismatches(Generator("g", ("A",), "1", "us", 8, 64, 64), (16, 128, 128), "mr")
    assert found == [
        "16 frames per clip (generator: 8)",
        "frames of 128x128 (generator: 64x64)",
        "modality mr (generator: us)",
    ]
    assert domain_mismatches(Generator("g", ("A",)), (16, 128, 128), "mr") == []  # unknown


def test_out_of_domain_is_refused_unless_allowed_then_stated_first(tmp_path):
    root = tiny_dataset(tmp_path / "data")  # 8 frames of 16x16, classes A, B, C
    items = layout.load_dataset(root, NAME, "train").items
    generator = Generator("g", ("C", "X", "A", "B"), num_frames=8, height=64, width=64)
    with pytest.raises(Refused, match="outside the domain.*16x16 \\(generator: 64x64\\)"):
        plan_generator(NAME, items, generator)
    plan = plan_generator(NAME, items, generator, allow_out_of_domain=True)
    assert plan.class_ids == {"A": 2, "B": 3, "C": 0}
    assert plan.class_names == ["C", "X", "A", "B"]
    assert plan.out_of_domain and plan.out_of_domain[0].startswith("OUT OF DOMAIN")

    sampler = FakeSampler()
    seen = []
    generate = sampler.generate

    def record(class_id, conditions, **kwargs):
        seen.append(class_id)
        return generate(class_id, conditions, **kwargs)

    sampler.generate = record
    out = tmp_path / "out"
    result = run_job(options(root, out, per_class=1), FakePool(sampler), FakeFilter(), plan)
    assert sorted(set(seen)) == [0, 2, 3]  # the generator's ids, not 0, 1, 2
    assert {w.cls: w.class_id for w in result.items} == {"A": 2, "B": 3, "C": 0}
    lines = summary_lines(result)
    assert lines[0] == plan.out_of_domain[0]
    assert lines[1].startswith("generator g; version unknown")  # the card's line
    assert "with generator g" in lines[2]
    assert json.loads((out / ".augment" / "job.json").read_text())["class_names"] == [
        "C", "X", "A", "B",
    ]  # fmt: skip
