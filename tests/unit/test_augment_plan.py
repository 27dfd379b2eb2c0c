"""The augmentation work plan: targets, the reference's spread over clips, shards, train only."""

from __future__ import annotations

from collections import Counter

import pytest

from clients.augment.job import plan_job
from clients.augment.plan import build_plan, class_targets, item_id, shard, shard_of
from services.data import layout
from services.data.layout import Item
from tests.unit.augment_support import NAME, TEST, TRAIN, options, tiny_dataset


def _items(counts: dict[str, int]) -> list[Item]:
    return [
        Item(layout.dataset_dir("r", "D") / f"{c}{i}_s00.avi", f"{c}{i}_s00.avi", c)
        for c, n in counts.items()
        for i in range(n)
    ]


def test_class_targets_per_class_multiplier_and_balance():
    counts = {"DCM": 13, "HCM": 39, "NOR": 40}
    assert class_targets(counts, per_class=5) == {"DCM": 5, "HCM": 5, "NOR": 5}
    assert class_targets(counts, multiplier=1.5) == {"DCM": 20, "HCM": 58, "NOR": 60}
    assert class_targets(counts, balance=True) == {"DCM": 27, "HCM": 1, "NOR": 0}
    with pytest.raises(ValueError):
        class_targets(counts, per_class=5, balance=True)
    with pytest.raises(ValueError):
        class_targets(counts)


def test_each_clip_guides_n_div_clips_and_the_remainder_goes_to_distinct_clips():
    items = _items({"A": 4, "B": 3})
    plan = build_plan(items, {"A": 10, "B": 2}, {"A": 0, "B": 1}, base_seed=66)
    per_class = Counter(w.cls for w in plan)
    assert per_class == {"A": 10, "B": 2}
    a = Counter(w.source_clip for w in plan if w.cls == "A")
    assert sorted(a.values()) == [2, 2, 3, 3]  # 10 // 4 = 2 each, 2 clips get one more
    assert sorted({w.seed for w in plan if w.cls == "A"}) == [66, 67, 68]
    b = [w for w in plan if w.cls == "B"]  # 2 < 3 clips: two distinct clips, seed 66
    assert len({w.source_clip for w in b}) == 2 and {w.seed for w in b} == {66}
    assert len({w.id for w in plan}) == len(plan)
    assert all(w.class_id == {"A": 0, "B": 1}[w.cls] for w in plan)
    assert plan[0].id == item_id(plan[0].cls, plan[0].source_clip, plan[0].seed)


def test_plan_is_deterministic_and_independent_of_metadata_order():
    items = _items({"A": 7, "B": 5})
    first = build_plan(items, {"A": 9, "B": 8}, {"A": 0, "B": 1}, 66)
    again = build_plan(list(reversed(items)), {"A": 9, "B": 8}, {"A": 0, "B": 1}, 66)
    assert first == again
    other_seed = build_plan(items, {"A": 9, "B": 8}, {"A": 0, "B": 1}, 100)
    assert {w.seed for w in other_seed} == {100, 101}


def test_plan_uses_training_clips_only(tmp_path):
    root = tiny_dataset(tmp_path / "data")
    test_names = {i.file_name for i in layout.load_dataset(root, NAME, "test")}
    assert len(test_names) == sum(TEST.values())
    for target in (
        {"per_class": 7},
        {"multiplier": 3.0, "per_class": None},
        {"balance": True, "per_class": None},
    ):
        p = plan_job(options(root, tmp_path / "out", **target))
        sources = {w.source_clip for w in p.plan}
        assert sources and not sources & test_names
        assert all(s.startswith("tr-") for s in sources)
    balanced = plan_job(options(root, tmp_path / "out", per_class=None, balance=True))
    assert balanced.targets == {c: max(TRAIN.values()) - n for c, n in TRAIN.items()}


def test_shards_partition_the_plan_by_case(tmp_path):
    root = tiny_dataset(tmp_path / "data")
    full = plan_job(options(root, tmp_path / "out", per_class=9)).plan
    for count in (2, 3):
        shards = [shard(full, i, count) for i in range(count)]
        ids = [w.id for s in shards for w in s]
        assert sorted(ids) == sorted(w.id for w in full) and len(ids) == len(set(ids))
        for i, part in enumerate(shards):
            assert all(shard_of(w.source_clip, count) == i for w in part)
            assert part == [w for w in full if w in part]  # plan order kept
        cases = [{w.source_clip for w in s} for s in shards]
        assert all(not (a & b) for k, a in enumerate(cases) for b in cases[k + 1 :])
    via_options = plan_job(options(root, tmp_path / "o", per_class=9, shard_index=1, shard_count=2))
    assert via_options.items == shard(full, 1, 2)
    with pytest.raises(ValueError):
        shard(full, 2, 2)
