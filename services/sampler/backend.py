"""What the sampler needs besides the engine: the model, text, conditions and decoding.

Conditions arrive as tensors, or are fetched from the condition encoder and the motion extractor
over gRPC (`clients.rpc.conditions`, with the caller's remaining deadline) when the request
carries only the reference clip. Decoding goes to the VAE codec over gRPC, or runs in-process
when the codec is co-located (no `--codec-target`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from clients.rpc.conditions import GrpcConditions
from genaug import wire
from genaug.deadline import Deadline
from genaug.errors import InvalidArgument, NotFound
from services.models.ldm.pipeline import SOLVERS, SamplingRequest, SequenceSampler
from services.models.ldm.unet import WEIGHTS_NAME, SequenceUNet
from services.models.repository import GeneratorCard, read_card
from services.models.runtime import resolve_device, resolve_dtype
from services.models.vae_codec import VaeCodec
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
    """Loads the sequence LDM and turns typed requests into `SamplingRequest`s.

    Args:
        model_dir: model repository (`ldm/`, `vae/`, `classes.json`, `card.json`: the
            generator's card, `services.models.repository`; derived when absent).
        device: "auto", "cpu", "cuda", ...
        encoder_target / motion_target / codec_target: service addresses; None means text is
            encoded in-process, reference clips cannot be turned into conditions here, and
            decoding runs in-process.
        num_classes: classes of the seeded model used when `ldm/` holds no weights.
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
    ):
        self.model_dir = Path(model_dir)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(self.device)
        self.targets = {"encoder": encoder_target, "motion": motion_target, "codec": codec_target}
        self.num_classes = num_classes
        self.default_steps = default_steps
        self.default_guidance = default_guidance
        self.limits = limits or RequestLimits()
        self.sampler: SequenceSampler | None = None
        self.provenance = ""
        self.classes: list[str] = []
        # The generators served, by name (one today: the model directory's), and the default.
        self.cards: dict[str, GeneratorCard] = {}
        self.default_model = ""
        self._clients: dict[str, object] = {}
        self._text_encoder = None
        self._local_codec = None

    # -- loading ------------------------------------------------------------------------------
    def load(self) -> None:
        ldm_dir = self.model_dir / "ldm"
        if (ldm_dir / WEIGHTS_NAME).is_file():
            unet = SequenceUNet.from_pretrained(ldm_dir, torch_dtype=self.dtype).to(self.device)
            self.provenance = "trained"
        else:
            logger.warning("no LDM weights in %s: seeded small model (untrained)", ldm_dir)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                unet = SequenceUNet.from_preset("small", num_classes=self.num_classes)
            self.provenance = "seeded-initialisation"
        classes_file = self.model_dir / "classes.json"
        n = unet.config.num_classes or 0
        self.classes = (
            json.loads(classes_file.read_text())
            if classes_file.is_file()
            else [str(i) for i in range(n)]
        )
        self._load_card(unet)
        self._connect()
        empty = torch.from_numpy(self.encode_text([""], Deadline.none())[0])
        self.sampler = SequenceSampler(unet, empty, self.device, self.dtype)
        if not self.targets["codec"]:
            self._local_codec = VaeCodec(self.model_dir / "vae", device=str(self.device))
            self._local_codec.load()

    def _load_card(self, unet: SequenceUNet) -> None:
        """The model directory's card, its gaps filled from the loaded UNet; its classes must be
        the ones the UNet's class ids index."""
        card = read_card(self.model_dir)
        if card.class_names and list(card.class_names) != self.classes:
            raise InvalidArgument(
                "card.json.class_names",
                f"{list(card.class_names)} differ from the model's classes {self.classes}",
            )
        cfg = unet.config
        side = cfg.sample_size * unet.latent_downsample
        card = replace(
            card,
            class_names=tuple(self.classes),
            latent_channels=card.latent_channels or int(cfg.in_channels),
            height=card.height or side,
            width=card.width or side,
        )
        self.cards = {card.name: card}
        self.default_model = card.name

    def check_model(self, name: str) -> GeneratorCard:
        """The card of generator `name` ("" = the default); NotFound naming the known ones."""
        card = self.cards.get(name or self.default_model)
        if card is None:
            known = ", ".join(sorted(self.cards)) or "none loaded"
            shown = repr(name[:64]) + ("..." if len(name) > 64 else "")  # never echo 100 kB
            raise NotFound(f"model: {shown} is not a generator of this sampler (known: {known})")
        return card

    def _connect(self) -> None:
        from clients.rpc.channel import open_channel
        from clients.rpc.encoder import ConditionEncoderClient
        from clients.rpc.health import wait_until_serving
        from clients.rpc.motion import MotionExtractorClient

        makers = {"encoder": ConditionEncoderClient, "motion": MotionExtractorClient}
        for name, target in self.targets.items():
            if not target:
                continue
            channel = open_channel(target)
            wait_until_serving(channel, timeout=300)
            if name == "codec":
                from clients.rpc.codec import VaeCodecClient

                self._clients[name] = VaeCodecClient(channel)
            else:
                self._clients[name] = makers[name](channel)

    def warmup(self) -> None:
        cfg = self.sampler.unet.config
        request = SamplingRequest(
            num_frames=2,
            class_label=0 if cfg.num_classes else None,
            num_inference_steps=1,
            latent_size=(cfg.sample_size, cfg.sample_size),
        )
        self.sampler.generate([request])

    def parameters(self) -> dict[str, str]:
        cfg = self.sampler.unet.config
        return {
            "weights": self.provenance,
            "classes": ",".join(self.classes),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "latent_size": str(cfg.sample_size),
            "decode": "grpc" if self.targets["codec"] else "in-process",
        }

    # -- conditions ---------------------------------------------------------------------------
    def encode_text(self, texts: list[str], deadline: Deadline) -> np.ndarray:
        client = self._clients.get("encoder")
        if client is not None:
            return client.text(texts, timeout=deadline.downstream_timeout(default=60))
        if self._text_encoder is None:
            from services.models.text import load_text_encoder

            self._text_encoder = load_text_encoder("minilm")
        return self._text_encoder.encode(texts)

    def build(self, request, deadline: Deadline) -> SamplingRequest:
        """Validate a GenerateRequest and gather its conditions (fetching missing ones)."""
        self.check_model(request.model)
        self.limits.check(request)
        cfg = self.sampler.unet.config
        c = request.conditions
        if cfg.num_classes and not 0 <= request.class_id < cfg.num_classes:
            raise InvalidArgument(
                "class_id",
                f"{request.class_id} is not in [0, {cfg.num_classes}) ({', '.join(self.classes)})",
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
            self._check_text(text)
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
                side = reference.shape[-1] // self.sampler.unet.latent_downsample
            latent_size = (side, side)
        return SamplingRequest(
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

    def _check_text(self, text: torch.Tensor) -> None:
        """A caller's text embedding must have the model's token width (else a matmul deep
        in the UNet fails, and with it every request batched in the same step)."""
        cfg = self.sampler.unet.config
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
    def decode(self, latents: np.ndarray, deadline: Deadline) -> np.ndarray:
        """Scaled latents (T,C,h,w) -> frames (T,1,H,W) in [-1,1]."""
        client = self._clients.get("codec")
        if client is not None:
            return client.decode(latents, timeout=deadline.downstream_timeout(default=120))
        return self._local_codec.decode(latents, deadline)
