"""`python -m services.vae_codec`: serve the grayscale VAE (default port 50052)."""

from __future__ import annotations

import sys

from genaug.v1 import vae_codec_pb2
from services.common.entrypoint import service_main
from services.common.server import ModelServer, TypedService
from services.models.generators import RepositoryView
from services.models.onnx_session import add_runtime_argument
from services.models.per_generator import (
    DEFAULT_MAX_LOADED,
    PerGenerator,
    add_generator_arguments,
)
from services.models.vae import VAE_CONFIGS
from services.models.vae_codec import VaeCodec
from services.vae_codec.model import VaeDecodeModel, VaeEncodeModel
from services.vae_codec.servicer import VaeCodecServicer, add_to_server


def build_server(
    config,
    vae_config: str = "small",
    seed: int = 0,
    batch_frames: int = 8,
    default_model: str = "",
    max_loaded: int = DEFAULT_MAX_LOADED,
    runtime: str = "auto",
) -> ModelServer:
    """The codec server for `config` (used by main and by the tests): the VAE of each
    generator of the model repository, loaded on first use; the open-inference models
    `vae_encode` / `vae_decode` are the default generator's."""
    view = RepositoryView(config.model_dir, default_model)

    def load(entry):
        codec = VaeCodec(entry.path / "vae", vae_config, seed, config.device, batch_frames, runtime)
        codec.load()
        return codec

    entry = view.resolve()
    # Loaded with the open-inference models, before SERVING.
    default = VaeCodec(entry.path / "vae", vae_config, seed, config.device, batch_frames, runtime)
    codecs = PerGenerator(view, load, max_loaded, preloaded={entry.key: default})
    typed = TypedService(
        vae_codec_pb2.DESCRIPTOR.services_by_name["VaeCodec"].full_name,
        VaeCodecServicer(codecs),
        add_to_server,  # the generated one, with the chunk streams on the serialised fast path
    )
    return ModelServer(config, [VaeEncodeModel(default), VaeDecodeModel(default)], [typed])


def add_arguments(parser) -> None:
    parser.add_argument(
        "--vae-config",
        choices=sorted(VAE_CONFIGS),
        default="small",
        help="configuration used when <model-dir>/vae holds no weights yet",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of that initialisation")
    parser.add_argument("--batch-frames", type=int, default=8, help="frames per forward pass")
    add_runtime_argument(parser)
    add_generator_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    return service_main(
        "vae_codec",
        __doc__,
        lambda config, args: build_server(
            config,
            args.vae_config,
            args.seed,
            args.batch_frames,
            args.default_model,
            args.max_loaded_models,
            args.runtime,
        ),
        add_arguments,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
