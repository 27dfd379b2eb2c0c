"""Generation requests as the sampler receives them, with real conditions.

Reference clips of each class of the bundled Phantom dataset (its train split unless a benchmark
asks for held-out ones): their MedSAM image priors and motion (field, trajectories, mask) are
computed in this process with the code the condition encoder and the motion extractor run
(`services.models.conditions`), once, and sent as tensors, so a benchmark of the sampler
measures sampling rather than condition fetching.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clients.rpc.sampler import conditions_message
from genaug.compute_lane import run_on_lane
from genaug.v1 import sampler_pb2 as pb
from services.data import layout
from services.data.phantoms import PHANTOM_NAME, ensure_bundled_dataset


@dataclass(frozen=True)
class Reference:
    class_name: str
    conditions: pb.Conditions


def class_references(
    work: Path, classes: list[str], split: str = "train", per_class: int = 1
) -> list[Reference]:
    """The first `per_class` clips of `split` of each of the generator's `classes` (class by
    class), with their conditions, computed on the compute lane (a second OpenMP team would
    slow the measured work)."""
    return run_on_lane(_class_references, work, classes, split, per_class)


def _class_references(
    work: Path, classes: list[str], split: str, per_class: int
) -> list[Reference]:
    from services.models.conditions import InProcessConditions

    data = ensure_bundled_dataset(work / "data")
    by_class = layout.load_dataset(data, PHANTOM_NAME, split).by_class()
    source = InProcessConditions("codec")
    references = []
    for name in classes:
        for record in by_class[name][:per_class]:
            frames = layout.read_clip(record.path)
            field, trajectories, mask = source.motion(frames)
            message = conditions_message(
                image_prior=source.prior(frames),
                motion_field=field,
                trajectories=trajectories,
                trajectory_mask=mask,
            )
            references.append(Reference(name, message))
    return references


def generate_request(
    request_id: str,
    class_id: int,
    reference: Reference,
    seed: int,
    steps: int,
    guidance: float,
    solver: str,
    priority: int = pb.PRIORITY_BATCH,
    decode: bool = False,
) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=request_id,
        class_id=class_id,
        conditions=reference.conditions,
        seed=seed,
        steps=steps,
        guidance_scale=guidance,
        solver=solver,
        decode=decode,
        priority=priority,
    )
