"""Checks `genaug augment` runs before any work: fail in seconds, naming what is wrong.

- `check_output`: the output root must not be the dataset root or inside it (the job rewrites
  `<out>/<DS>_volume/train_metadata.jsonl`, which at `--out D` would be the real dataset's).
- `check_targets`: every service the job will call answers its health check within a few
  seconds (instead of the channel's retries running for minutes against a wrong address).
- `reference_items`: clips padded with black frames (`n_pad > 0`, from sources shorter than a
  clip) are not used as references while their class has others; classes with no training clip
  at all are reported (`report_missing_classes`), since the job reads the training split only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from genaug.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.data import layout
from services.data.layout import Item
from services.data.safety import check_outside

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 5.0


def check_output(o) -> None:
    """Refuse `--out` at or inside `--dataset-root` (InvalidArgument naming `out`)."""
    check_outside(o.out, "out", o.dataset_root, "dataset_root")


@dataclass(frozen=True)
class Target:
    role: str  # the flag that names it, without dashes (sampler, encoder, motion, filter)
    service: str  # the name it serves health under
    address: str


def job_targets(o) -> list[Target]:
    """The services this job will call, in the order it calls them."""
    targets = [Target("sampler", "sampler", address) for address in o.sampler]
    if o.encoder and "prior" in o.conditions:
        targets.append(Target("encoder", "condition_encoder", o.encoder))
    if o.motion and "motion" in o.conditions:
        targets.append(Target("motion", "motion_extractor", o.motion))
    if o.filter and not o.no_filter:
        targets.append(Target("filter", "filter", o.filter))
    return targets


def health(channel, service: str, timeout: float) -> str:
    """`SERVING`, another status name, `UNREACHABLE` or `WRONG_SERVICE` (answers, not it)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as error:
        return "WRONG_SERVICE" if error.code() == grpc.StatusCode.NOT_FOUND else "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def check_targets(o, settings, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """Health-check every target once, within `timeout` seconds each.

    Raises:
        Unavailable: naming every target that is unreachable or not serving.
        FailedPrecondition: a target answers but serves another service.
    """
    from clients.rpc.channel import open_channel

    problems, wrong = [], []
    for target in job_targets(o):
        with open_channel(target.address, settings) as channel:
            status = health(channel, target.service, timeout)
        if status == "WRONG_SERVICE":
            wrong.append(f"--{target.role} {target.address} answers but is not a {target.service}")
        elif status != "SERVING":
            state = "unreachable" if status == "UNREACHABLE" else status.lower()
            problems.append(f"--{target.role} {target.address} ({target.service}): {state}")
    if wrong:
        raise FailedPrecondition("; ".join(wrong))
    if problems:
        raise Unavailable(f"health check within {timeout:g}s failed: " + "; ".join(problems))


def reference_items(items: Sequence[Item]) -> list[Item]:
    """The training clips that guide generation: padded clips only where a class has no
    other (each exclusion is logged, naming the class and the count)."""
    by_class: dict[str, list[Item]] = {}
    for item in items:
        by_class.setdefault(item.cls, []).append(item)
    chosen: list[Item] = []
    for cls, group in by_class.items():
        whole = [i for i in group if not int(i.extra.get("n_pad") or 0)]
        if whole and len(whole) < len(group):
            logger.warning(
                "class %r: %d clip(s) padded with black frames are not used as references",
                cls,
                len(group) - len(whole),
            )
        elif not whole:
            logger.warning(
                "class %r: every training clip is padded with black frames; they guide "
                "generation anyway (their motion ends in still frames)",
                cls,
            )
        chosen.extend(whole or group)
    order = {id(item): n for n, item in enumerate(items)}
    return sorted(chosen, key=lambda item: order[id(item)])


def report_missing_classes(root, name: str, train_classes: Iterable[str], named: Iterable[str]):
    """Classes of the dataset (its test split, the classes file) without a training clip, each
    logged: the job generates nothing for them. Returns them, sorted."""
    others = set(named)
    with contextlib.suppress(NotFound, InvalidArgument):  # no readable test split: skip it
        others |= set(layout.load_dataset(root, name, "test").classes)
    missing = sorted(others - set(train_classes))
    for cls in missing:
        logger.warning(
            "class %r has no training clip (its patients are all in the test split): it gets "
            "no synthetic clips",
            cls,
        )
    return missing
