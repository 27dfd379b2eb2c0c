"""`python -m services.motion_extractor`: motion fields and trajectories (default port 50055)."""

from __future__ import annotations

import sys

from genaug.v1 import motion_extractor_pb2, motion_extractor_pb2_grpc
from services.common.entrypoint import service_main
from services.common.server import ModelServer, TypedService
from services.models.motion.extractor import MotionExtractor
from services.motion_extractor.model import MotionFieldModel
from services.motion_extractor.servicer import MotionExtractorServicer


def build_server(config, latent_factor: int = 8, max_concurrent: int = 2) -> ModelServer:
    extractor = MotionExtractor(latent_factor, max_concurrent)
    typed = TypedService(
        motion_extractor_pb2.DESCRIPTOR.services_by_name["MotionExtractor"].full_name,
        MotionExtractorServicer(extractor),
        motion_extractor_pb2_grpc.add_MotionExtractorServicer_to_server,
    )
    return ModelServer(config, [MotionFieldModel(extractor)], [typed])


def add_arguments(parser) -> None:
    parser.add_argument(
        "--latent-factor",
        type=int,
        default=8,
        help="trajectory grid = frame size / this (the VAE downsampling, 8)",
    )
    parser.add_argument(
        "--max-concurrent", type=int, default=2, help="clips computed at once (default 2)"
    )


def main(argv: list[str] | None = None) -> int:
    return service_main(
        "motion_extractor",
        __doc__,
        lambda config, args: build_server(config, args.latent_factor, args.max_concurrent),
        add_arguments,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
