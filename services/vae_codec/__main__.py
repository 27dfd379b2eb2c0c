"""`python -m services.vae_codec`: serve the grayscale VAE (default port 50052)."""

from __future__ import annotations

import argparse
import sys

from genaug.v1 import vae_codec_pb2, vae_codec_pb2_grpc
from services.common.config import base_parser, config_from_args
from services.common.logs import configure_logging
from services.common.server import ModelServer, TypedService
from services.models.vae import VAE_CONFIGS
from services.vae_codec.codec import VaeCodec
from services.vae_codec.model import VaeDecodeModel, VaeEncodeModel
from services.vae_codec.servicer import VaeCodecServicer

SERVICE = "vae_codec"
DEFAULT_PORT = 50052
DEFAULT_METRICS_PORT = 9052


def build_server(
    config, vae_config: str = "small", seed: int = 0, batch_frames: int = 8
) -> ModelServer:
    """The codec server for `config` (used by __main__ and by the tests)."""
    codec = VaeCodec(config.model_dir / "vae", vae_config, seed, config.device, batch_frames)
    servicer = TypedService(
        vae_codec_pb2.DESCRIPTOR.services_by_name["VaeCodec"].full_name,
        VaeCodecServicer(codec),
        vae_codec_pb2_grpc.add_VaeCodecServicer_to_server,
    )
    return ModelServer(config, [VaeEncodeModel(codec), VaeDecodeModel(codec)], [servicer])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.vae_codec",
        description=__doc__,
        parents=[base_parser(SERVICE, DEFAULT_PORT, DEFAULT_METRICS_PORT)],
    )
    parser.add_argument(
        "--vae-config",
        choices=sorted(VAE_CONFIGS),
        default="small",
        help="configuration used when <model-dir>/vae holds no weights yet",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of that initialisation")
    parser.add_argument("--batch-frames", type=int, default=8, help="frames per forward pass")
    args = parser.parse_args(argv)
    config = config_from_args(args)
    configure_logging(config.log_level)
    server = build_server(config, args.vae_config, args.seed, args.batch_frames)
    return server.serve_until_signal()


if __name__ == "__main__":
    sys.exit(main())
