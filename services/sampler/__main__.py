"""`python -m services.sampler`: the sequence-diffusion sampler (default port 50053)."""

from __future__ import annotations

import sys

from genaug.v1 import sampler_pb2, sampler_pb2_grpc
from services.common.entrypoint import at_least_zero, service_main
from services.common.result_cache import DEFAULT_MAX_BYTES
from services.common.server import ModelServer, TypedService
from services.sampler.backend import SamplerBackend
from services.sampler.conditions_cache import DEFAULT_MAX_BYTES as DEFAULT_CONDITIONS_BYTES
from services.sampler.conditions_cache import ConditionsCache
from services.sampler.engine import DEFAULT_GATHER_S, ContinuousBatchingEngine
from services.sampler.kserve_models import sync_models
from services.sampler.limits import RequestLimits
from services.sampler.servicer import SamplerServicer, generate_threads
from services.sampler.watcher import RepositoryWatcher


class SamplerRuntime:
    """Loads the generators, then starts the engine (before SERVING) and, with `poll_s`, the
    model repository's watcher (hot loading); stops both on shutdown."""

    def __init__(
        self,
        backend: SamplerBackend,
        servicer: SamplerServicer,
        max_batch_size: int,
        max_queue: int,
        result_cache: tuple[int, int] = (256, DEFAULT_MAX_BYTES),
        poll_s: float = 0.0,
        interactive_alone: str = "auto",
        gather_s: float = DEFAULT_GATHER_S,
    ):
        self.backend, self.servicer = backend, servicer
        self.gather_s = gather_s
        self.interactive_alone = interactive_alone  # "on", "off", or "auto": on for a CPU
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.result_cache = result_cache  # (entries, bytes) kept for retries
        self.engine: ContinuousBatchingEngine | None = None
        self.watcher = RepositoryWatcher(self.refresh, poll_s) if poll_s > 0 else None
        self.kserve_models: dict | None = None  # the server's KServe v2 registry, when served

    def load(self) -> None:
        if not self.backend.loaded:
            self.backend.load()

    def refresh(self) -> list[str]:
        """One scan of the model repository (hot loading); the KServe v2 models follow."""
        changes = self.backend.refresh()
        self._sync_kserve()
        return changes

    def _sync_kserve(self) -> None:
        if self.kserve_models is not None:
            sync_models(self.kserve_models, self.backend, self.servicer)

    def warmup(self) -> None:
        self.backend.warmup()
        self._sync_kserve()
        entries, nbytes = self.result_cache
        if self.watcher is not None:
            self.watcher.start()
        self.engine = ContinuousBatchingEngine(
            self.backend.router,
            self.max_batch_size,
            self.max_queue,
            completed_cache=entries,
            completed_cache_bytes=nbytes,
            interactive_alone=self._interactive_alone(),
            gather_s=self.gather_s,
        )
        self.servicer.engine = self.engine

    def _interactive_alone(self) -> bool:
        if self.interactive_alone == "auto":
            return self.backend.device.type == "cpu"
        return self.interactive_alone == "on"

    def stop_admitting(self) -> None:
        if self.engine is not None:
            self.engine.stop_admitting()

    def hand_back(self) -> None:
        self.stop()

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        if self.engine is not None:
            self.engine.close()


def build_server(
    config,
    backend: SamplerBackend,
    max_batch_size: int = 4,
    max_queue: int = 64,
    result_cache: tuple[int, int] = (256, DEFAULT_MAX_BYTES),
    poll_s: float = 0.0,
    interactive_alone: str = "auto",
    gather_s: float = DEFAULT_GATHER_S,
    conditions_cache_bytes: int = DEFAULT_CONDITIONS_BYTES,
) -> ModelServer:
    servicer = SamplerServicer(None, backend, ConditionsCache(conditions_cache_bytes))
    runtime = SamplerRuntime(
        backend,
        servicer,
        max_batch_size,
        max_queue,
        result_cache,
        poll_s,
        interactive_alone,
        gather_s,
    )
    typed = TypedService(
        sampler_pb2.DESCRIPTOR.services_by_name["Sampler"].full_name,
        servicer,
        sampler_pb2_grpc.add_SamplerServicer_to_server,
        method_threads={"Generate": generate_threads(max_batch_size, max_queue)},
        call_started={"Generate": servicer.announce_generate},
    )
    server = ModelServer(config, [], [typed], on_stop=runtime.stop, components=[runtime])
    runtime.kserve_models = server.models  # one KServe v2 model per generator, once loaded
    server.runtime = runtime
    return server


def add_arguments(parser) -> None:
    parser.add_argument("--encoder-target", help="condition encoder address (text, priors)")
    parser.add_argument("--motion-target", help="motion extractor address (motion from clips)")
    parser.add_argument(
        "--codec-target", help="VAE codec address for decoding; omitted: decode in-process"
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=4,
        help="requests advanced together per denoising step (default 4)",
    )
    parser.add_argument(
        "--interactive-alone",
        choices=("auto", "on", "off"),
        default="auto",
        help="while interactive requests run, batch requests pause instead of sharing their "
        "steps (a CPU step's time grows with its rows); auto: on for a CPU, off for a GPU",
    )
    parser.add_argument(
        "--gather-ms",
        type=at_least_zero(float),
        default=DEFAULT_GATHER_S * 1000,
        help="when work starts on an idle sampler, the most milliseconds its first step waits "
        "for requests that arrived with it and are still being received or prepared, so that "
        f"they share their steps; 0 never waits (default {DEFAULT_GATHER_S * 1000:g})",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="waiting requests before RESOURCE_EXHAUSTED (default 64)",
    )
    parser.add_argument(
        "--result-cache-entries",
        type=at_least_zero(int),
        default=256,
        help="finished results kept for retries with the same request id (default 256)",
    )
    parser.add_argument(
        "--result-cache-mib",
        type=at_least_zero(float),
        default=DEFAULT_MAX_BYTES / 2**20,
        help="most MiB those results may hold, decoded clips included; the oldest go first "
        f"(default {DEFAULT_MAX_BYTES >> 20})",
    )
    parser.add_argument(
        "--conditions-cache-mib",
        type=at_least_zero(float),
        default=DEFAULT_CONDITIONS_BYTES / 2**20,
        help="most MiB of received conditions kept by digest, so later requests may name them "
        "instead of sending them again; 0 keeps none "
        f"(default {DEFAULT_CONDITIONS_BYTES >> 20})",
    )
    parser.add_argument("--default-steps", type=int, default=50, help="when a request sets 0")
    parser.add_argument(
        "--default-guidance",
        type=float,
        default=7.5,
        help="classifier-free guidance when a request sets 0 (default 7.5)",
    )
    limits = RequestLimits()
    parser.add_argument(
        "--max-frames",
        type=int,
        default=limits.max_frames,
        help=f"frames of one generated clip (default {limits.max_frames})",
    )
    parser.add_argument(
        "--max-frame-side",
        type=int,
        default=limits.max_frame_side,
        help=f"pixels of a reference frame's longer side (default {limits.max_frame_side})",
    )
    parser.add_argument(
        "--models",
        default="",
        help="comma-separated generators of the model repository to serve (default: all)",
    )
    parser.add_argument(
        "--default-model",
        default="",
        help="generator for requests that name none (default: the repository's "
        "repository.json, else the only one)",
    )
    parser.add_argument(
        "--repository-poll-s",
        type=at_least_zero(float),
        default=30.0,
        help="seconds between scans of the model repository for new generators and versions, "
        "loaded without a restart; 0 disables (default 30)",
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=3,
        help="classes of the seeded model used when ldm/ holds no weights",
    )


def main(argv: list[str] | None = None) -> int:
    def build(config, args):
        backend = SamplerBackend(
            config.model_dir,
            config.device,
            args.encoder_target,
            args.motion_target,
            args.codec_target,
            args.num_classes,
            args.default_steps,
            args.default_guidance,
            RequestLimits(max_frames=args.max_frames, max_frame_side=args.max_frame_side),
            models=[m for m in args.models.split(",") if m],
            default_model=args.default_model,
        )
        cache = (args.result_cache_entries, int(args.result_cache_mib * 2**20))
        return build_server(
            config,
            backend,
            args.max_batch_size,
            args.max_queue,
            cache,
            args.repository_poll_s,
            args.interactive_alone,
            args.gather_ms / 1000,
            int(args.conditions_cache_mib * 2**20),
        )

    return service_main("sampler", __doc__, build, add_arguments, argv)


if __name__ == "__main__":
    sys.exit(main())
