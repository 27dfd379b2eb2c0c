"""A stock Triton Inference Server (PyTriton's bundled tritonserver) serving our exported models.

Run by `benchmarks.triton` with the Python of its own virtual environment (`runs/triton-venv`,
Python 3.12: nvidia-pytriton, onnxruntime, numpy 1.26, opencv-python-headless), never with the
project's: it imports nothing from the project. Serves, under our KServe v2 names and tensors:

- `vae_encode`: `frames` FP32 (N,1,H,W) -> `latents` FP32, the exported ONNX graph on an
  onnxruntime CPU session;
- `image_prior`: raw grey `frames` UINT8 (N,H,W) -> `prior` FP32 (N,256,64,64): the project's
  `preprocess_frames` (the file `--preprocess` names, loaded by path; it needs only numpy and
  OpenCV) with LiteMedSAM's preprocessing, then the exported ONNX graph, as our service does it.

One model instance each, no dynamic batching: one forward at a time, as our services run it.

    <venv>/bin/python benchmarks/triton_server.py --model-repository DIR --preprocess FILE
        --grpc-port P --http-port P --metrics-port P [--threads 2] [--workspace DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import signal
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def session(path: Path, threads: int) -> ort.InferenceSession:
    """A CPU session with the project's settings (`onnx_graphs.onnx_session`)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # As the services run theirs: spinning idle threads would take the CPU from the other
    # side's rounds on a 2-core machine, and from this server's own gRPC threads.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_preprocess(path: Path):
    """`preprocess_frames` bound to LiteMedSAM's preprocessing, from the project's own file."""
    spec = importlib.util.spec_from_file_location("medsam_preprocess", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return lambda frames: module.preprocess_frames(frames, module.LITEMEDSAM_PREPROCESSING)


def vae_encode_fn(encoder: ort.InferenceSession):
    def infer(requests):
        return [
            {"latents": encoder.run(["latents"], {"frames": r.data["frames"]})[0]} for r in requests
        ]

    return infer


def image_prior_fn(prior: ort.InferenceSession, preprocess):
    def infer(requests):
        return [
            {"prior": prior.run(["prior"], {"frames": preprocess(r.data["frames"])})[0]}
            for r in requests
        ]

    return infer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-repository",
        type=Path,
        required=True,
        help="`genaug export-onnx --triton-layout` output",
    )
    parser.add_argument(
        "--preprocess", type=Path, required=True, help="services/models/medsam_preprocess.py"
    )
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--workspace", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    repo = args.model_repository
    encoder = session(repo / "vae_encode" / "1" / "model.onnx", args.threads)
    prior = session(repo / "image_prior" / "1" / "model.onnx", args.threads)
    preprocess = load_preprocess(args.preprocess)
    config = TritonConfig(
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        http_address="127.0.0.1",
        http_port=args.http_port,
        metrics_address="127.0.0.1",
        metrics_port=args.metrics_port,
        exit_timeout_secs=5,
    )
    unbatched = ModelConfig(batching=False)
    with Triton(config=config, workspace=args.workspace) as triton:
        triton.bind(
            model_name="vae_encode",
            infer_func=vae_encode_fn(encoder),
            inputs=[Tensor(name="frames", dtype=np.float32, shape=(-1, 1, -1, -1))],
            outputs=[Tensor(name="latents", dtype=np.float32, shape=(-1, -1, -1, -1))],
            config=unbatched,
        )
        triton.bind(
            model_name="image_prior",
            infer_func=image_prior_fn(prior, preprocess),
            inputs=[Tensor(name="frames", dtype=np.uint8, shape=(-1, -1, -1))],
            outputs=[Tensor(name="prior", dtype=np.float32, shape=(-1, 256, 64, 64))],
            config=unbatched,
        )
        # SIGTERM (how the benchmark stops it) leaves serve() like Ctrl+C, and `with` stops
        # tritonserver and its Python-backend stubs.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        print("triton_server: models bound, serving", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            triton.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
