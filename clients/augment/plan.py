"""The deterministic work plan of an augmentation job: which clip guides which seeds.

As the reference's `generate.py`: for a class with n training clips and a target of N
generations, every clip guides N // n generations with seeds base_seed, base_seed + 1, ...;
the remaining N % n generations go to N % n of its clips, one each, with the next seed. The
reference picked those clips at random; here they are the first in a stable hash order of
(base seed, class, clip name), so the plan is a pure function of the dataset and the options.

A work item's id (`<class>-<clip stem>-<seed>`) names its output file and, with the job's
generation key, its sampler request id. Shards partition the plan by case (source clip): a
stable hash of the clip name modulo the shard count, so the clips of one case never split.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.data.layout import Item

_UNSAFE = re.compile(r"[^A-Za-z0-9.+-]")


@dataclass(frozen=True)
class WorkItem:
    """One generation.

    Attributes:
        id: `<class>-<source clip stem>-<seed>`, unique in a plan.
        cls: class name; class_id: its sampler/filter id.
        source_clip: file name of the guiding training clip (the item's case).
        seed: the generation seed.
    """

    id: str
    cls: str
    class_id: int
    source_clip: str
    seed: int


def safe_name(text: str) -> str:
    """`text` with every character outside [A-Za-z0-9.+-] replaced by `_`, and a leading `.`
    too (a name starting with one would be hidden, and the layout refuses it)."""
    name = _UNSAFE.sub("_", str(text)) or "_"
    return "_" + name[1:] if name.startswith(".") else name


def item_id(cls: str, source_clip: str, seed: int) -> str:
    return f"{safe_name(cls)}-{Path(source_clip).stem}-{seed}"


def class_targets(
    counts: dict[str, int],
    per_class: int | None = None,
    multiplier: float | None = None,
    balance: bool = False,
) -> dict[str, int]:
    """Generations per class: N each, round(x * count), or up to the largest class.

    Exactly one of `per_class`, `multiplier`, `balance` must be given.
    """
    given = sum(x is not None and x is not False for x in (per_class, multiplier, balance))
    if given != 1:
        raise ValueError("give exactly one of per_class, multiplier, balance")
    if per_class is not None:
        if per_class < 0:
            raise ValueError("per_class must be >= 0")
        return {c: int(per_class) for c in sorted(counts)}
    if multiplier is not None:
        if multiplier < 0:
            raise ValueError("multiplier must be >= 0")
        return {c: int(round(multiplier * n)) for c, n in sorted(counts.items())}
    largest = max(counts.values(), default=0)
    return {c: largest - n for c, n in sorted(counts.items())}


def _rank(base_seed: int, cls: str, clip: str) -> str:
    return hashlib.sha256(f"{base_seed}\0{cls}\0{clip}".encode()).hexdigest()


def build_plan(
    items: Iterable[Item],
    targets: dict[str, int],
    class_ids: dict[str, int],
    base_seed: int = 66,
) -> list[WorkItem]:
    """The work items for training `items` (never pass test items), in a stable order.

    Args:
        items: the training split's clips (`layout.load_dataset(root, name, "train")`).
        targets: generations per class (classes absent here get none).
        class_ids: class name -> sampler class id.
        base_seed: the first seed of every clip.
    """
    by_class: dict[str, list[str]] = {}
    for item in items:
        by_class.setdefault(item.cls, []).append(item.file_name)
    plan: list[WorkItem] = []
    for cls in sorted(targets):
        n_target = int(targets[cls])
        clips = sorted(set(by_class.get(cls, [])))
        if n_target <= 0:
            continue
        if not clips:
            raise ValueError(f"class {cls!r} has no training clips to guide generation")
        if cls not in class_ids:
            raise ValueError(f"class {cls!r} has no sampler class id")
        q, r = divmod(n_target, len(clips))
        extra = set(sorted(clips, key=lambda c: _rank(base_seed, cls, c))[:r])
        for clip in clips:
            for k in range(q + (clip in extra)):
                seed = base_seed + k
                plan.append(WorkItem(item_id(cls, clip, seed), cls, class_ids[cls], clip, seed))
    ids = [w.id for w in plan]
    if len(set(ids)) != len(ids):
        raise ValueError("work item ids collide (class names that differ only in odd characters)")
    return plan


def shard_of(source_clip: str, shard_count: int) -> int:
    """The shard of a case: a stable hash of its clip name modulo `shard_count`."""
    digest = hashlib.sha256(source_clip.encode()).digest()
    return int.from_bytes(digest[:8], "big") % shard_count


def shard(plan: Sequence[WorkItem], index: int, count: int) -> list[WorkItem]:
    """The items of shard `index` of `count` (every case whole, plan order kept)."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in [0, {count})")
    return [w for w in plan if shard_of(w.source_clip, count) == index]
