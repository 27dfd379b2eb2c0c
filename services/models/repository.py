"""A generator's card: what a model repository folder was trained on, machine-readable.

`<repo>/card.json` names the generator, its class names in class id order (the id a
`GenerateRequest.class_id` carries indexes this list), the domain it knows (modality, frames per
clip, frame size, latent channels) and the data it was trained on (the dataset's name and a
fingerprint: the sha256 of its training metadata file), with the recipe and its measured figures
where they are known. `genaug train all --export` writes it; `read_card` derives one from
`classes.json` and the model configs for a folder without it (older exports), leaving what it
cannot know empty (0 or "").

    {"format": 1, "name": "phantom", "version": "1", "class_names": ["DCM", "HCM", "NOR"],
     "modality": "us", "num_frames": 8, "height": 64, "width": 64, "latent_channels": 8,
     "dataset_name": "Phantom", "dataset_fingerprint": "<sha256>", "recipe": {...},
     "figures": {...}}
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from genaug.errors import InvalidArgument
from services.data import layout

CARD_FILE = "card.json"
CLASSES_FILE = "classes.json"
CARD_FORMAT = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class GeneratorCard:
    """One generator's card (see the module docstring); 0 or "" where a field is unknown."""

    name: str
    class_names: tuple[str, ...]
    version: str = "1"
    modality: str = ""
    num_frames: int = 0
    height: int = 0
    width: int = 0
    latent_channels: int = 0
    dataset_name: str = ""
    dataset_fingerprint: str = ""
    recipe: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["class_names"] = list(self.class_names)
        return {"format": CARD_FORMAT, **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: object, where: str = CARD_FILE) -> GeneratorCard:
        """A card from parsed JSON; InvalidArgument naming the field for a malformed one."""
        if not isinstance(data, dict):
            raise InvalidArgument(where, "must be a JSON object")
        fmt = data.get("format", CARD_FORMAT)
        if fmt != CARD_FORMAT:
            raise InvalidArgument(f"{where}.format", f"{fmt!r} is not {CARD_FORMAT}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known) - {"format"})
        if unknown:
            raise InvalidArgument(where, f"unknown keys {unknown}")
        values: dict = {}
        for name, spec in known.items():
            if name not in data:
                continue
            value = data[name]
            if name == "class_names":
                if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
                    raise InvalidArgument(f"{where}.class_names", "must be a list of strings")
                if len(set(value)) != len(value):
                    raise InvalidArgument(f"{where}.class_names", f"repeats a name: {value}")
                value = tuple(value)
            elif spec.type == "int":
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise InvalidArgument(f"{where}.{name}", f"must be an integer >= 0: {value!r}")
            elif spec.type == "str":
                if not isinstance(value, str):
                    raise InvalidArgument(f"{where}.{name}", f"must be a string: {value!r}")
            elif spec.type == "dict" and not isinstance(value, dict):
                raise InvalidArgument(f"{where}.{name}", "must be a JSON object")
            values[name] = value
        for required in ("name", "class_names"):
            if required not in values:
                raise InvalidArgument(f"{where}.{required}", "is missing")
        if not _NAME.match(values["name"]):
            raise InvalidArgument(
                f"{where}.name", f"{values['name']!r} is not 1-64 of [A-Za-z0-9._-]"
            )
        return cls(**values)

    @classmethod
    def from_json(cls, text: str, where: str = CARD_FILE) -> GeneratorCard:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidArgument(where, f"is not JSON: {error}") from None
        return cls.from_dict(data, where)


def valid_name(name: str) -> bool:
    """Whether `name` can name a generator (and its repository folder)."""
    return bool(_NAME.match(name))


def dataset_fingerprint(root: str | os.PathLike, name: str) -> str:
    """sha256 (hex) of the dataset's training metadata file (`<DS>_volume/train_metadata.jsonl`)."""
    path = layout.metadata_path(root, name, "train")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _json(path: Path) -> dict | list | None:
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def derive_card(repo_dir: str | os.PathLike, name: str | None = None) -> GeneratorCard:
    """A card from what an older export holds: `classes.json`, `ldm/config.json`,
    `vae/config.json` and `vae/provenance.json`. Frames per clip and modality stay unknown."""
    repo = Path(repo_dir)
    classes = _json(repo / CLASSES_FILE) or _json(repo / "ldm" / CLASSES_FILE) or []
    ldm = _json(repo / "ldm" / "config.json") or {}
    vae = _json(repo / "vae" / "config.json") or {}
    provenance = _json(repo / "vae" / "provenance.json") or {}
    if not classes and ldm.get("num_classes"):
        classes = [str(i) for i in range(int(ldm["num_classes"]))]
    side = 0
    if ldm.get("sample_size") and vae.get("block_out_channels"):
        side = int(ldm["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    dataset = str(provenance.get("dataset") or "")
    if name is None:
        name = _card_name(dataset.lower() or repo.resolve().name)
    return GeneratorCard(
        name=name,
        class_names=tuple(str(c) for c in classes),
        height=side,
        width=side,
        latent_channels=int(vae.get("latent_channels") or ldm.get("in_channels") or 0),
        dataset_name=dataset,
    )


def _card_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "-", text).strip("-.")[:64]
    return name or "default"


def read_card(repo_dir: str | os.PathLike) -> GeneratorCard:
    """The card of a model repository folder: `card.json`, else one derived (`derive_card`).

    Raises:
        InvalidArgument: `card.json` is malformed (naming the field), or it disagrees with
            `classes.json` (the class ids the models were trained with).
    """
    repo = Path(repo_dir)
    path = repo / CARD_FILE
    if not path.is_file():
        return derive_card(repo)
    card = GeneratorCard.from_json(path.read_text(), str(path))
    classes = _json(repo / CLASSES_FILE)
    if classes is not None and list(classes) != list(card.class_names):
        raise InvalidArgument(
            f"{path}.class_names",
            f"{list(card.class_names)} differ from {CLASSES_FILE} {list(classes)}",
        )
    return card


def write_card(repo_dir: str | os.PathLike, card: GeneratorCard) -> Path:
    """Write `<repo>/card.json` atomically; returns its path."""
    return layout.atomic_write_bytes(Path(repo_dir) / CARD_FILE, card.to_json().encode())


def training_card(
    repo_dir: str | os.PathLike,
    dataset_root: str | os.PathLike,
    dataset_name: str,
    *,
    name: str | None = None,
    modality: str = "",
    recipe: dict | None = None,
    figures: dict | None = None,
) -> GeneratorCard:
    """The card of a freshly exported repository: the configs' fields (`derive_card`) with the
    training data's frame count and size, name and fingerprint."""
    derived = derive_card(repo_dir, name or _card_name(dataset_name.lower()))
    train = layout.load_dataset(dataset_root, dataset_name, "train")
    num_frames = height = width = 0
    if len(train):
        frames, height, width = layout.read_clip(train[0].path).shape[:3]
        num_frames = int(frames)
    extras = [str(i.extra.get("modality") or "") for i in train]
    modality = modality or (extras[0] if extras and len(set(extras)) == 1 else "")
    return GeneratorCard(
        name=derived.name,
        class_names=derived.class_names,
        modality=modality,
        num_frames=num_frames,
        height=int(height) or derived.height,
        width=int(width) or derived.width,
        latent_channels=derived.latent_channels,
        dataset_name=dataset_name,
        dataset_fingerprint=dataset_fingerprint(dataset_root, dataset_name),
        recipe=dict(recipe or {}),
        figures=dict(figures or {}),
    )
