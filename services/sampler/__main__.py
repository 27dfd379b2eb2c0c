"""`python -m services.sampler`: the sequence-diffusion sampler (default port 50053)."""

from __future__ import annotations

import sys

from genaug.v1 import sampler_pb2, sampler_pb2_grpc
from services.common.entrypoint import service_main
from services.common.server import ModelServer, TypedService
from services.sampler.backend import SamplerBackend
from services.sampler.engine import ContinuousBatchingEngine
from services.sampler.limits import RequestLimits
from services.sampler.servicer import SamplerServicer, generate_threads


class SamplerRuntime:
    """Loads the model, then starts the engine (before SERVING); stops it on shutdown."""

    def __init__(
        self,
        backend: SamplerBackend,
        servicer: SamplerServicer,
        max_batch_size: int,
        max_queue: int,
    ):
        self.backend, self.servicer = backend, servicer
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.engine: ContinuousBatchingEngine | None = None

    def load(self) -> None:
        if self.backend.sampler is None:
            self.backend.load()

    def warmup(self) -> None:
        self.backend.warmup()
        self.engine = ContinuousBatchingEngine(
            self.backend.sampler, self.max_batch_size, self.max_queue
        )
        self.servicer.engine = self.engine

    def stop_admitting(self) -> None:
        if self.engine is not None:
            self.engine.stop_admitting()

    def hand_back(self) -> None:
        self.stop()

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.close()


def build_server(
    config, backend: SamplerBackend, max_batch_size: int = 4, max_queue: int = 64
) -> ModelServer:
    servicer = SamplerServicer(None, backend)
    runtime = SamplerRuntime(backend, servicer, max_batch_size, max_queue)
    typed = TypedService(
        sampler_pb2.DESCRIPTOR.services_by_name["Sampler"].full_name,
        servicer,
        sampler_pb2_grpc.add_SamplerServicer_to_server,
        method_threads={"Generate": generate_threads(max_batch_size, max_queue)},
    )
    server = ModelServer(config, [], [typed], on_stop=runtime.stop, components=[runtime])
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
        "--max-queue",
        type=int,
        default=64,
        help="waiting requests before RESOURCE_EXHAUSTED (default 64)",
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
        )
        return build_server(config, backend, args.max_batch_size, args.max_queue)

    return service_main("sampler", __doc__, build, add_arguments, argv)


if __name__ == "__main__":
    sys.exit(main())
