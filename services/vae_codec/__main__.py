"""`python -m services.vae_codec`: serve the grayscale VAE (default port 50052)."""

from __future__ import annotations

import sys

from genaug.v1 import vae_codec_pb2, vae_codec_pb2_grpc
from services.common.entrypoint import service_main
from services.common.server import ModelServer, TypedService
from services.models.vae import VAE_CONFIGS
from services.models.vae_codec import VaeCodec
from services.vae_codec.model import VaeDecodeModel, VaeEncodeModel
from services.vae_codec.servicer import VaeCodecServicer


def build_server(
    config, vae_config: str = "small", seed: int = 0, batch_frames: int = 8
) -> ModelServer:
    """The codec server for `config` (used by main and by the tests)."""
    codec = VaeCodec(config.model_dir / "vae", vae_config, seed, config.device, batch_frames)
    typed = TypedService(
        vae_codec_pb2.DESCRIPTOR.services_by_name["VaeCodec"].full_name,
        VaeCodecServicer(codec),
        vae_codec_pb2_grpc.add_VaeCodecServicer_to_server,
    )
    return ModelServer(config, [VaeEncodeModel(codec), VaeDecodeModel(codec)], [typed])


def add_arguments(parser) -> None:
    parser.add_argument(
        "--vae-config",
        choices=sorted(VAE_CONFIGS),
        default="small",
        help="configuration used when <model-dir>/vae holds no weights yet",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of that initialisation")
    parser.add_argument("--batch-frames", type=int, default=8, help="frames per forward pass")


def main(argv: list[str] | None = None) -> int:
    return service_main(
        "vae_codec",
        __doc__,
        lambda config, args: build_server(config, args.vae_config, args.seed, args.batch_frames),
        add_arguments,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
