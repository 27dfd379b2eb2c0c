"""`python -m services.condition_encoder`: image priors and text embeddings (default port 50051)."""

from __future__ import annotations

import sys
from pathlib import Path

from genaug.v1 import condition_encoder_pb2, condition_encoder_pb2_grpc
from services.common.entrypoint import at_least_zero, service_main
from services.common.server import ModelServer, TypedService
from services.condition_encoder.encoder import (
    DEFAULT_TEXT_CACHE_BYTES,
    IMAGE_ENCODERS,
    ConditionEncoder,
    EncoderLimits,
)
from services.condition_encoder.model import ImagePriorModel, TextEmbeddingModel
from services.condition_encoder.servicer import ConditionEncoderServicer
from services.models.onnx_session import add_runtime_argument


def build_server(
    config,
    image_encoder: str = "litemedsam",
    medsam_checkpoint: Path | None = None,
    clip_path: Path | None = None,
    text_dim: int | None = None,
    image_batch: int | None = None,
    limits: EncoderLimits | None = None,
    runtime: str = "auto",
    text_cache_bytes: int = DEFAULT_TEXT_CACHE_BYTES,
) -> ModelServer:
    """The condition encoder server for `config` (used by main and by the tests)."""
    encoder = ConditionEncoder(
        config.model_dir,
        image_encoder,
        medsam_checkpoint,
        clip_path,
        text_dim,
        config.device,
        image_batch,
        limits=limits,
        runtime=runtime,
        text_cache_bytes=text_cache_bytes,
    )
    typed = TypedService(
        condition_encoder_pb2.DESCRIPTOR.services_by_name["ConditionEncoder"].full_name,
        ConditionEncoderServicer(encoder),
        condition_encoder_pb2_grpc.add_ConditionEncoderServicer_to_server,
    )
    return ModelServer(config, [ImagePriorModel(encoder), TextEmbeddingModel(encoder)], [typed])


def add_arguments(parser) -> None:
    defaults = EncoderLimits()
    g = parser.add_argument_group("condition encoder")
    g.add_argument(
        "--image-encoder",
        choices=IMAGE_ENCODERS,
        default="litemedsam",
        help="image prior network: litemedsam (packaged real weights, default) or "
        "medsam_vit_b (needs --medsam-checkpoint)",
    )
    g.add_argument(
        "--medsam-checkpoint",
        type=Path,
        default=None,
        help="MedSAM(-Lite) checkpoint (medsam_vit_b.pth); default: packaged lite_medsam.pth",
    )
    g.add_argument(
        "--clip-path",
        type=Path,
        default=None,
        help="local CLIP text model folder (SD layout or model+tokenizer); default: MiniLM",
    )
    g.add_argument(
        "--text-dim",
        type=int,
        default=None,
        help="width of a seeded (untrained) text projection when <model-dir>/text/"
        "projection.safetensors is absent; default none = the backbone width (384 for MiniLM)",
    )
    g.add_argument(
        "--image-batch", type=int, default=None, help="frames per image forward (default 8/2)"
    )
    add_runtime_argument(g, "image prior network")
    g.add_argument(
        "--max-frames",
        type=int,
        default=defaults.max_frames,
        help=f"frames per image-prior request (default {defaults.max_frames})",
    )
    g.add_argument(
        "--max-texts",
        type=int,
        default=defaults.max_texts,
        help=f"captions per text request (default {defaults.max_texts})",
    )
    g.add_argument(
        "--text-cache-mib",
        type=at_least_zero(int),
        default=DEFAULT_TEXT_CACHE_BYTES >> 20,
        help="MiB of text embeddings kept per caption, so repeated captions skip the forward "
        f"(default {DEFAULT_TEXT_CACHE_BYTES >> 20}; 0: none)",
    )


def _build(config, args) -> ModelServer:
    limits = EncoderLimits(max_frames=args.max_frames, max_texts=args.max_texts)
    return build_server(
        config,
        args.image_encoder,
        args.medsam_checkpoint,
        args.clip_path,
        args.text_dim,
        args.image_batch,
        limits,
        args.runtime,
        args.text_cache_mib << 20,
    )


def main(argv: list[str] | None = None) -> int:
    return service_main("condition_encoder", __doc__, _build, add_arguments, argv)


if __name__ == "__main__":
    sys.exit(main())
