"""`python -m services.filter`: the noisy synthetic-data filter (default port 50054)."""

from __future__ import annotations

import sys

from genaug.v1 import filter_pb2, filter_pb2_grpc
from services.common.entrypoint import service_main
from services.common.server import ModelServer, TypedService
from services.filter.model import ClassifierModel, VaeSeqModel
from services.filter.scorer import PoolScorer
from services.filter.servicer import FilterServicer
from services.models.generators import RepositoryView
from services.models.per_generator import (
    DEFAULT_MAX_LOADED,
    PerGenerator,
    add_generator_arguments,
)
from services.models.vae import VAE_CONFIGS


def build_server(
    config,
    vae_config: str = "small",
    seed: int = 0,
    num_classes: int = 2,
    batch_frames: int = 8,
    max_pool_clips: int = 4096,
    default_model: str = "",
    max_loaded: int = DEFAULT_MAX_LOADED,
) -> ModelServer:
    """The filter server for `config` (used by main and by the tests): the VAE and classifier
    of each generator of the model repository, loaded on first use; the open-inference models
    `vae_seq` / `classifier` are the default generator's."""
    view = RepositoryView(config.model_dir, default_model)

    def scorer_for(path):
        return PoolScorer(path, vae_config, seed, num_classes, config.device, batch_frames)

    def load(entry):
        loaded = scorer_for(entry.path)
        loaded.load()
        return loaded

    default = view.resolve()
    scorer = scorer_for(default.path)  # loaded with the open-inference models, before SERVING
    scorers = PerGenerator(view, load, max_loaded, preloaded={default.key: scorer})
    typed = TypedService(
        filter_pb2.DESCRIPTOR.services_by_name["Filter"].full_name,
        FilterServicer(scorers, max_pool_clips),
        filter_pb2_grpc.add_FilterServicer_to_server,
    )
    return ModelServer(config, [VaeSeqModel(scorer), ClassifierModel(scorer)], [typed])


def add_arguments(parser) -> None:
    g = parser.add_argument_group("filter")
    g.add_argument(
        "--num-classes",
        type=int,
        default=2,
        help="classes of the seeded classifier used when <model-dir>/classifier/ holds no "
        "weights (a trained classifier brings its own; default 2)",
    )
    g.add_argument(
        "--vae-config",
        choices=sorted(VAE_CONFIGS),
        default="small",
        help="VAE configuration used when <model-dir>/vae holds no weights yet",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of those initialisations")
    g.add_argument("--batch-frames", type=int, default=8, help="frames per VAE forward")
    g.add_argument(
        "--max-pool-clips", type=int, default=4096, help="largest pool accepted (default 4096)"
    )
    add_generator_arguments(g)


def main(argv: list[str] | None = None) -> int:
    return service_main(
        "filter",
        __doc__,
        lambda config, args: build_server(
            config,
            args.vae_config,
            args.seed,
            args.num_classes,
            args.batch_frames,
            args.max_pool_clips,
            args.default_model,
            args.max_loaded_models,
        ),
        add_arguments,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
