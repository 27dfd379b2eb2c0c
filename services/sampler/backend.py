"""What the sampler needs besides the engine: the model, text, conditions and decoding.

Conditions arrive as tensors, or are fetched from the condition encoder and the motion extractor
over gRPC (`clients.rpc.conditions`, with the caller's remaining deadline) when the request
carries only the reference clip. Decoding goes to the VAE codec over gRPC, or runs in-process
when the codec is co-located (no `--codec-target`).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import torch

from clients.rpc.conditions import GrpcConditions
from genaug import wire
from genaug.compute_lane import LANE, run_on_lane
from genaug.deadline import Deadline
from genaug.errors import GenaugError, InvalidArgument
from services.models.generators import GeneratorEntry, default_model, pick, scan
from services.models.ldm.pipeline import SOLVERS, SamplingRequest
from services.models.repository import CARD_FILE, GeneratorCard
from services.models.runtime import resolve_device, resolve_dtype
from services.sampler.generators import (
    GeneratorRouter,
    LoadedGenerator,
    RoutedRequest,
    load_generator,
)
from services.sampler.limits import RequestLimits

logger = logging.getLogger(__name__)


# The layout of each condition tensor (what the UNet and the trajectory code index into).
CONDITION_LAYOUTS = {
    "image_prior": "(256,64,64)",
    "motion_field": "(T-1,2,H,W)",
    "trajectories": "(N,S,3)",
    "trajectory_mask": "(N,S)",
    "reference_frames": "(T,H,W)",
    "text_embedding": "(L,D)",
}


def _tensor(message, field: str) -> torch.Tensor | None:
    if not wire.is_set(message):
        return None
    array = wire.from_proto(message, field)
    layout = CONDITION_LAYOUTS[field.rpartition(".")[2]]
    if array.ndim != layout.count(",") + 1 or 0 in array.shape:
        raise InvalidArgument(
            field, f"must be a non-empty {layout} tensor, got shape {list(array.shape)}"
        )
    return torch.from_numpy(np.array(array))


class SamplerBackend:
    """Loads the generators of a model repository and turns typed requests into routed
    sampling requests (`generators.RoutedRequest`).

    Args:
        model_dir: model repository: `<model>/<version>/` folders of generators
            (`services.models.generators`), or one generator's folder (`ldm/`, `vae/`,
            `classes.json`, `card.json`).
        device: "auto", "cpu", "cuda", ...
        encoder_target / motion_target / codec_target: service addresses; None means text is
            encoded in-process, reference clips cannot be turned into conditions here, and
            decoding runs in-process (with each generator's own VAE).
        num_classes: classes of the seeded model used when `ldm/` holds no weights.
        models: serve only these generators (default: every one in the repository).
        default_model: what requests naming no model get (default: the repository's
            `repository.json`, else the only generator).
    """

    def __init__(
        self,
        model_dir: Path,
        device: str = "auto",
        encoder_target: str | None = None,
        motion_target: str | None = None,
        codec_target: str | None = None,
        num_classes: int = 3,
        default_steps: int = 50,
        default_guidance: float = 7.5,
        limits: RequestLimits | None = None,
        models: list[str] | None = None,
        default_model: str = "",
    ):
        self.model_dir = Path(model_dir)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(self.device)
        self.targets = {"encoder": encoder_target, "motion": motion_target, "codec": codec_target}
        self.num_classes = num_classes
        self.default_steps = default_steps
        self.default_guidance = default_guidance
        self.limits = limits or RequestLimits()
        self.models = list(models or [])
        self.configured_default = default_model
        self.router = GeneratorRouter()
        # The generators served, by name; replaced whole (never mutated) so readers need no lock.
        self.generators: dict[str, LoadedGenerator] = {}
        self.default_model = ""
        self._failed: dict[str, tuple] = {}  # name -> the version key that failed to load
        self._refresh_lock = threading.Lock()
        self._empty_text: torch.Tensor | None = None
        self._clients: dict[str, object] = {}
        self._text_encoder = None

    # -- loading ------------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return bool(self.generators)

    @property
    def cards(self) -> dict[str, GeneratorCard]:
        return {name: g.card for name, g in self.generators.items()}

    def load(self) -> None:
        """Load every generator to serve; an error in any of them fails the start."""
        self._connect()
        self._empty_text = torch.from_numpy(self.encode_text([""], Deadline.none())[0])
        entries = scan(self.model_dir, self.models or None)
        loaded = {name: run_on_lane(self._load, entry) for name, entry in entries.items()}
        self.default_model = default_model(self.model_dir, entries, self.configured_default)
        self.generators = loaded

    def _load(self, entry: GeneratorEntry) -> LoadedGenerator:
        generator = load_generator(
            entry,
            self.device,
            self.dtype,
            self._empty_text,
            self.num_classes,
            decode_locally=not self.targets["codec"],
        )
        logger.info(
            "generator %s version %s (%s, classes %s) from %s",
            entry.name,
            entry.version,
            generator.provenance,
            ",".join(generator.classes),
            entry.path,
        )
        return generator

    def refresh(self) -> list[str]:
        """Hot loading: load generators new to the repository and new versions of served
        ones, drop those that left it; the old version finishes the requests it began.
        A version that fails to load is logged and not retried until its folder changes;
        what was served goes on being served. Returns what changed, for the log."""
        with self._refresh_lock:
            try:
                entries = scan(self.model_dir, self.models or None)
                default = default_model(self.model_dir, entries, self.configured_default)
            except GenaugError as error:
                logger.error("model repository %s: %s; serving as before", self.model_dir, error)
                return []
            current = dict(self.generators)
            changes = []
            for name, entry in entries.items():
                served = current.get(name)
                key = (entry.version, _stamp(entry.path))
                if served is not None and served.entry.version == entry.version:
                    continue
                if self._failed.get(name) == key:
                    continue
                try:
                    generator = run_on_lane(self._load, entry)
                    run_on_lane(generator.warmup)
                except Exception as error:  # a bad export must not take the sampler down
                    self._failed[name] = key
                    logger.error("generator %s version %s failed to load: %s",
                                 name, entry.version, error)  # fmt: skip
                    continue
                self._failed.pop(name, None)
                current[name] = generator
                changes.append(f"{name} {served.entry.version if served else '-'} -> "
                               f"{entry.version}")  # fmt: skip
            for name in sorted(set(current) - set(entries)):
                changes.append(f"{name} {current.pop(name).entry.version} -> removed")
            if default not in current:
                default = next(iter(current)) if len(current) == 1 else ""
            self.generators, self.default_model = current, default
            for change in changes:
                logger.info("model repository: generator %s", change)
            return changes

    def generator(self, name: str) -> LoadedGenerator:
        """Generator `name` ("" = the default).

        Raises:
            NotFound: naming the served generators.
            InvalidArgument: no name and several generators without a default.
        """
        generators = self.generators
        entry = pick({n: g.entry for n, g in generators.items()}, name, self.default_model)
        return generators[entry.name]

    def check_model(self, name: str) -> GeneratorCard:
        """The card of generator `name` ("" = the default); NotFound naming the known ones."""
        return self.generator(name).card

    def _connect(self) -> None:
        from clients.rpc.channel import open_channel
        from clients.rpc.encoder import ConditionEncoderClient
        from clients.rpc.health import wait_until_serving
        from clients.rpc.motion import MotionExtractorClient

        makers = {"encoder": ConditionEncoderClient, "motion": MotionExtractorClient}
        for name, target in self.targets.items():
            if not target or name in self._clients:
                continue
            channel = open_channel(target)
            wait_until_serving(channel, timeout=300)
            if name == "codec":
                from clients.rpc.codec import VaeCodecClient

                self._clients[name] = VaeCodecClient(channel)
            else:
                self._clients[name] = makers[name](channel)

    def warmup(self) -> None:
        for generator in self.generators.values():
            run_on_lane(generator.warmup)

    def parameters(self) -> dict[str, str]:
        default = self.generators.get(self.default_model) or next(iter(self.generators.values()))
        return {
            "weights": default.provenance,
            "models": ",".join(sorted(self.generators)),
            "default_model": self.default_model,
            "classes": ",".join(default.classes),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "latent_size": str(default.sampler.unet.config.sample_size),
            "decode": "grpc" if self.targets["codec"] else "in-process",
        }

    # -- conditions ---------------------------------------------------------------------------
    def encode_text(self, texts: list[str], deadline: Deadline) -> np.ndarray:
        client = self._clients.get("encoder")
        if client is not None:
            return client.text(texts, timeout=deadline.downstream_timeout(default=60))
        return LANE.run_within(deadline, "text embedding", self._encode_text_here, texts)

    def _encode_text_here(self, texts: list[str]) -> np.ndarray:
        if self._text_encoder is None:
            from services.models.text import load_text_encoder

            self._text_encoder = load_text_encoder("minilm")
        return self._text_encoder.encode(texts)

    def build(
        self,
        request,
        deadline: Deadline,
        generator: LoadedGenerator | None = None,
        conditions=None,
    ) -> RoutedRequest:
        """Validate a GenerateRequest against its generator (`request.model`, or the one
        given) and gather its conditions (`conditions`, e.g. those its digest names, or the
        request's own; fetching missing ones)."""
        generator = generator or self.generator(request.model)
        c = request.conditions if conditions is None else conditions
        self.limits.check(request, c)
        cfg = generator.sampler.unet.config
        if cfg.num_classes and not 0 <= request.class_id < cfg.num_classes:
            raise InvalidArgument(
                "class_id",
                f"{request.class_id} is not in [0, {cfg.num_classes}) of generator "
                f"{generator.name} ({', '.join(generator.classes)})",
            )
        steps = request.steps or self.default_steps
        if not 1 <= steps <= self.limits.max_steps:
            raise InvalidArgument("steps", f"{steps} is not in [1, {self.limits.max_steps}]")
        guidance = request.guidance_scale or self.default_guidance
        if not 0 < guidance <= self.limits.max_guidance:
            raise InvalidArgument(
                "guidance_scale", f"{guidance} is not in (0, {self.limits.max_guidance}]"
            )
        solver = request.solver or "ddim"
        if solver not in SOLVERS:
            raise InvalidArgument("solver", f"{solver!r} is not one of {', '.join(SOLVERS)}")
        prior = _tensor(c.image_prior, "conditions.image_prior")
        motion = _tensor(c.motion_field, "conditions.motion_field")
        traj = _tensor(c.trajectories, "conditions.trajectories")
        mask = _tensor(c.trajectory_mask, "conditions.trajectory_mask")
        reference = _tensor(c.reference_frames, "conditions.reference_frames")
        if reference is not None:
            prior, motion, traj, mask = self._fetch(reference, prior, motion, traj, mask, deadline)
        text = _tensor(c.text_embedding, "conditions.text_embedding")
        if text is not None:
            self._check_text(text, cfg)
        elif c.text:
            text = torch.from_numpy(np.array(self.encode_text([c.text], deadline)[0]))
        num_frames = request.num_frames or (
            motion.shape[0] + 1
            if motion is not None
            else reference.shape[0]
            if reference is not None
            else 8
        )
        latent_size = None
        if motion is None:
            side = cfg.sample_size
            if reference is not None:
                side = reference.shape[-1] // generator.sampler.unet.latent_downsample
            latent_size = (side, side)
        sampling = SamplingRequest(
            num_frames=int(num_frames),
            class_label=int(request.class_id) if cfg.num_classes else None,
            seed=int(request.seed % (1 << 63)),
            num_inference_steps=int(steps),
            guidance_scale=float(guidance),
            solver=solver,
            text_embedding=text,
            image_prior=prior,
            motion_field=motion,
            trajectories=traj,
            trajectory_mask=mask,
            latent_size=latent_size,
        )
        return RoutedRequest(generator, sampling)

    def _check_text(self, text: torch.Tensor, cfg) -> None:
        """A caller's text embedding must have the model's token width (else a matmul deep
        in the UNet fails, and with it every request batched in the same step)."""
        width = cfg.text_embed_dim or cfg.cross_attention_dim
        tokens = self.limits.max_text_tokens
        if text.dim() != 2 or text.shape[1] != width or not 1 <= text.shape[0] <= tokens:
            raise InvalidArgument(
                "conditions.text_embedding",
                f"must be FP32 (L, {width}) with 1 <= L <= {tokens}, got {list(text.shape)}",
            )

    def _fetch(self, reference, prior, motion, traj, mask, deadline):
        """The missing prior and motion of a request's reference frames, from the services."""
        frames = reference.numpy()
        if frames.dtype != np.uint8 or frames.ndim != 3:
            raise InvalidArgument(
                "conditions.reference_frames",
                f"must be UINT8 (T,H,W), got {frames.dtype} {list(frames.shape)}",
            )
        source = GrpcConditions(
            self._clients.get("encoder"),
            self._clients.get("motion"),
            timeout=lambda: deadline.downstream_timeout(default=120),
        )
        if prior is None:
            self._require(source, "prior", "conditions.image_prior")
            prior = torch.from_numpy(np.array(source.prior(frames)))
        if motion is None:
            self._require(source, "motion", "conditions.motion_field")
            motion, traj, mask = (torch.from_numpy(np.array(a)) for a in source.motion(frames))
        return prior, motion, traj, mask

    @staticmethod
    def _require(source: GrpcConditions, kind: str, field: str) -> None:
        if kind not in source.kinds:
            service = {"prior": "encoder", "motion": "motion"}[kind]
            raise InvalidArgument(
                field,
                f"missing, and no {service} service is configured to compute it from "
                "conditions.reference_frames",
            )

    # -- decoding -----------------------------------------------------------------------------
    def decode(
        self, latents: np.ndarray, deadline: Deadline, generator: LoadedGenerator
    ) -> np.ndarray:
        """Scaled latents (T,C,h,w) -> frames (T,1,H,W) in [-1,1], with the VAE of the
        generator (and version) that sampled them."""
        client = self._clients.get("codec")
        if client is not None:
            return client.decode(
                latents,
                timeout=deadline.downstream_timeout(default=120),
                model=generator.name,
                model_version=generator.entry.version,
            )
        return generator.local_codec.decode(latents, deadline)  # on the lane: VaeCodec


def _stamp(path: Path) -> tuple:
    """When a version folder or its card last changed (a failed load is retried after)."""
    card = path / CARD_FILE
    return (path.stat().st_mtime_ns, card.stat().st_mtime_ns if card.is_file() else 0)
