"""Checks `genaug augment` runs before any work: fail in seconds, naming what is wrong.

- `check_output`: the output root must not be the dataset root or inside it (the job rewrites
  `<out>/<DS>_volume/train_metadata.jsonl`, which at `--out D` would be the real dataset's).
- `check_targets`: every service the job will call answers its health check within a few
  seconds (instead of the channel's retries running for minutes against a wrong address).
- `reference_items`: clips padded with black frames (`n_pad > 0`, from sources shorter than a
  clip) are not used as references while their class has others; classes with no training clip
  at all are reported (`report_missing_classes`), since the job reads the training split only.
- `check_generator`: the samplers' `ListModels` names the generator (`--model`, else the
  default) and its classes in id order; every dataset class must be one of them, as it is or
  through `--class-map FILE` (`resolve_classes`), and the dataset's frame count, frame size and
  modality must be the generator's card's unless `--allow-out-of-domain` (`domain_mismatches`).
  Class ids sent to the sampler come from the generator's order, never from sorting the
  dataset's names.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from genaug.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.data import layout
from services.data.layout import Item
from services.data.safety import check_outside

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 5.0


def dataset_name(root: Path, name: str | None) -> str:
    """`--name`, else the only dataset under the root."""
    if name:
        return name
    names = sorted(p.name[: -len("_volume")] for p in Path(root).glob("*_volume") if p.is_dir())
    if len(names) != 1:
        raise ValueError(f"--name is needed: datasets under {root}: {names or 'none'}")
    return names[0]


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


# ---------------------------------------------------------------------------- the generator


class Refused(ValueError):
    """The dataset does not fit the generator (its classes or its domain): nothing was done."""


@dataclass(frozen=True)
class Generator:
    """What the job needs of a generator's card, as a sampler's ListModels sends it (the
    report's header shows it; `figures` are the card's measured figures, from `card_json`)."""

    name: str
    class_names: tuple[str, ...]
    version: str = ""
    modality: str = ""
    num_frames: int = 0
    height: int = 0
    width: int = 0
    dataset_name: str = ""
    dataset_fingerprint: str = ""
    figures: dict = field(default_factory=dict, compare=False)

    @classmethod
    def from_info(cls, info) -> Generator:
        return cls(
            info.name,
            tuple(info.class_names),
            info.version,
            info.modality,
            info.num_frames,
            info.height,
            info.width,
            info.dataset_name,
            info.dataset_fingerprint,
            _card_figures(info.card_json),
        )


def _card_figures(card_json: str) -> dict:
    """The `figures` object of a card's JSON; empty when there is none or it is malformed."""
    try:
        figures = json.loads(card_json or "{}").get("figures")
    except (ValueError, AttributeError):
        return {}
    return dict(figures) if isinstance(figures, dict) else {}


@dataclass(frozen=True)
class GeneratorPlan:
    """The checked generator of a job: its dataset class -> class id map, the class names in
    id order (a dataset's name where one maps to the id, else the generator's), and what of
    the dataset is outside its domain (empty unless `--allow-out-of-domain` let it through)."""

    generator: Generator
    class_ids: dict[str, int]
    class_names: list[str]
    out_of_domain: list[str] = field(default_factory=list)


def _names(names: Iterable[str]) -> str:
    return ", ".join(names) or "none"


def choose_generator(listings: Mapping[str, Sequence], model: str | None) -> Generator:
    """The generator `model` names (else each sampler's default) in every sampler's listing
    (address -> GeneratorInfo list); the replicas must agree on its classes.

    Raises:
        Refused: a sampler serves no such generator, or the replicas disagree.
    """
    chosen: dict[str, Generator] = {}
    for address, infos in listings.items():
        names = [info.name for info in infos]
        if model:
            match = [info for info in infos if info.name == model]
            if not match:
                raise Refused(
                    f"--model {model!r}: sampler {address} serves no such generator "
                    f"(its generators: {_names(names)})"
                )
        else:
            match = [info for info in infos if info.is_default] or (
                list(infos) if len(infos) == 1 else []
            )
            if len(match) != 1:
                raise Refused(
                    f"sampler {address} has no default generator: name one with --model "
                    f"(its generators: {_names(names)})"
                )
        chosen[address] = Generator.from_info(match[0])
    first_address, first = next(iter(chosen.items()))
    for address, generator in chosen.items():
        if (generator.name, generator.class_names) != (first.name, first.class_names):
            raise Refused(
                f"the samplers disagree on the generator: {first_address} serves "
                f"{first.name!r} ({_names(first.class_names)}), {address} serves "
                f"{generator.name!r} ({_names(generator.class_names)})"
            )
    return first


def load_class_map(path: str | Path) -> dict[str, str]:
    """A `--class-map` file: a JSON object of dataset class name -> generator class name."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError too
        raise Refused(f"--class-map {path}: not a readable JSON file ({error})") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise Refused(
            f"--class-map {path}: must be a JSON object of dataset class name -> generator "
            'class name, e.g. {"B": "NOR"}'
        )
    return data


def resolve_classes(
    dataset_classes: Sequence[str],
    generator: Generator,
    class_map: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """Dataset class name -> the generator's class id (exact names, or through `class_map`).

    Raises:
        Refused: a dataset class is not a generator class (naming both lists), the map names
            a generator class that does not exist, or two dataset classes share one.
    """
    class_map = dict(class_map or {})
    known = list(generator.class_names)
    ids = {name: i for i, name in enumerate(known)}
    theirs = f"its classes: {_names(known)}; the dataset's: {_names(dataset_classes)}"
    for source, target in class_map.items():
        if target not in ids:
            raise Refused(
                f"--class-map maps {source!r} to {target!r}, which is not a class of "
                f"generator {generator.name!r} ({theirs})"
            )
    unused = sorted(set(class_map) - set(dataset_classes))
    if unused:
        logger.warning("--class-map names classes the dataset does not have: %s", unused)
    resolved: dict[str, int] = {}
    for cls in dataset_classes:
        target = class_map.get(cls, cls)
        if target not in ids:
            raise Refused(
                f"dataset class {cls!r} is not a class of generator {generator.name!r} "
                f"({theirs}); map names with --class-map FILE"
            )
        resolved[cls] = ids[target]
    by_id: dict[int, list[str]] = {}
    for cls, i in resolved.items():
        by_id.setdefault(i, []).append(cls)
    shared = {known[i]: names for i, names in by_id.items() if len(names) > 1}
    if shared:
        raise Refused(
            f"dataset classes share a class of generator {generator.name!r}: "
            + "; ".join(f"{_names(v)} -> {k}" for k, v in sorted(shared.items()))
            + " (each generator class takes one dataset class)"
        )
    return resolved


def domain_mismatches(
    generator: Generator, clip_shape: Sequence[int], modality: str = ""
) -> list[str]:
    """How a dataset's clips (T, H, W) and modality differ from the generator's card (fields
    the card leaves unknown are not compared)."""
    frames, height, width = (int(v) for v in clip_shape[:3])
    found = []
    if generator.num_frames and frames != generator.num_frames:
        found.append(f"{frames} frames per clip (generator: {generator.num_frames})")
    size = (generator.height, generator.width)
    if all(size) and (height, width) != size:
        found.append(f"frames of {height}x{width} (generator: {size[0]}x{size[1]})")
    if generator.modality and modality and modality != generator.modality:
        found.append(f"modality {modality} (generator: {generator.modality})")
    return found


def dataset_domain(items: Sequence[Item]) -> tuple[tuple[int, ...], str]:
    """The first training clip's shape (T, H, W) and the split's modality ("" if unknown or
    mixed)."""
    shape = tuple(layout.read_clip(items[0].path).shape) if items else (0, 0, 0)
    modalities = {str(item.extra.get("modality") or "") for item in items}
    return shape, (modalities.pop() if len(modalities) == 1 else "")


def plan_generator(
    name: str,
    items: Sequence[Item],
    generator: Generator,
    class_map: Mapping[str, str] | None = None,
    allow_out_of_domain: bool = False,
) -> GeneratorPlan:
    """Resolve a dataset (its training items) against `generator`.

    Raises:
        Refused: an unknown class (`resolve_classes`), or a dataset outside the generator's
            domain without `allow_out_of_domain`.
    """
    classes = sorted({item.cls for item in items})
    class_ids = resolve_classes(classes, generator, class_map)
    shape, modality = dataset_domain(items)
    mismatches = domain_mismatches(generator, shape, modality)
    if mismatches and not allow_out_of_domain:
        raise Refused(
            f"dataset {name!r} is outside the domain of generator {generator.name!r}: "
            + "; ".join(mismatches)
            + " (pass --allow-out-of-domain to generate anyway)"
        )
    by_id = {i: cls for cls, i in class_ids.items()}
    names = [by_id.get(i, known) for i, known in enumerate(generator.class_names)]
    notes = []
    if mismatches:
        notes.append(
            f"OUT OF DOMAIN: dataset {name!r} differs from generator {generator.name!r}: "
            + "; ".join(mismatches)
        )
    return GeneratorPlan(generator, class_ids, names, notes)


def list_generators(o, settings, timeout: float = HEALTH_TIMEOUT_S) -> dict[str, list] | None:
    """Each `--sampler`'s ListModels (address -> GeneratorInfo list); None when a sampler
    predates ListModels (UNIMPLEMENTED: the job then keeps the old class ids, with a warning).

    Raises:
        Unavailable: a sampler does not answer.
    """
    import grpc

    from clients.rpc.channel import open_channel
    from clients.rpc.errors import GenAugError
    from clients.rpc.sampler import SamplerClient

    listings = {}
    for address in o.sampler:
        with open_channel(address, settings) as channel:
            try:
                listings[address] = SamplerClient(channel).list_models(timeout=timeout)
            except GenAugError as error:
                if error.code == grpc.StatusCode.UNIMPLEMENTED:
                    logger.warning(
                        "sampler %s does not list its generators (no ListModels): dataset "
                        "classes are not checked against the generator's",
                        address,
                    )
                    return None
                raise Unavailable(f"--sampler {address}: ListModels failed: {error}") from None
    return listings


def check_generator(o, settings, timeout: float = HEALTH_TIMEOUT_S) -> GeneratorPlan | None:
    """The job's generator, checked against the dataset before any work (see the module
    docstring); None for samplers without ListModels.

    Raises:
        Refused: the dataset does not fit the generator, or the options contradict it.
        Unavailable: a sampler does not answer ListModels.
    """
    listings = list_generators(o, settings, timeout)
    if listings is None:
        if o.model or o.class_map:
            raise Refused("--model and --class-map need samplers that answer ListModels")
        return None
    generator = choose_generator(listings, o.model)
    name = dataset_name(o.dataset_root, o.name)
    train = layout.load_dataset(o.dataset_root, name, "train")
    class_map = load_class_map(o.class_map) if o.class_map else None
    plan = plan_generator(name, train.items, generator, class_map, o.allow_out_of_domain)
    if o.classes_file:
        listed = [str(c) for c in json.loads(Path(o.classes_file).read_text())]
        if listed != list(generator.class_names):
            raise Refused(
                f"--classes-file {o.classes_file} lists {_names(listed)}, but generator "
                f"{generator.name!r} has the classes {_names(generator.class_names)} (in id "
                "order); leave --classes-file out (ListModels gives the ids)"
            )
    for note in plan.out_of_domain:
        logger.warning("%s (--allow-out-of-domain)", note)
    return plan
