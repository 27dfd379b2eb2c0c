"""onnxruntime CPU sessions over the exported VAE and image-prior graphs, checked against torch.

The CPU inference path of the VAE and the image prior (onnxruntime on the CPU where it is
faster, outputs checked against torch within 1e-4, torch kept for training and CUDA): the
graphs are those `genaug export-onnx` writes (`services.models.onnx_export`, names and tensors
of our KServe v2 models), loaded into a CPU `InferenceSession` with a configurable intra-op
thread count. `OnnxGraph.check_parity` runs the same inputs through the torch module the graph
was exported from and refuses the session above the tolerance, so a service can fall back to
torch instead of serving different numbers.

    graph = export_graph("vae_encode", vae_specs(vae_dir)[0], cache_dir, threads=2)
    graph.check_parity([np.zeros((2, 1, 64, 64), np.float32)])
    latents = graph(frames)  # float32 (N,C,h,w), as VaeCodec.encode

Used by `VaeCodec` and `ConditionEncoder` (`runtime="auto"`: onnxruntime on the CPU) through
`checked_graphs`: export (cached on disk under a hash of the weights and the onnx / torch /
onnxruntime versions, written atomically), load, and parity-check on the spec's own inputs; any
failure returns the reason so the caller stays on torch.

The cache (`services.models.onnx_cache`) is pruned after each export.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from services.models.onnx_cache import (
    CACHE_ENV,
    CACHE_MAX_AGE_ENV,
    CACHE_MAX_MIB_ENV,
    default_cache_dir,
    mark_in_use,
    prune_quietly,
    touch,
)
from services.models.onnx_graphs import DEFAULT_OPSET, ExportSpec, export_onnx, onnx_session

logger = logging.getLogger(__name__)

PARITY_ATOL = 1e-4
RUNTIMES = ("auto", "torch", "onnxruntime")
# The exported graphs' tensors (`onnx_export`): model -> (input, output).
GRAPH_TENSORS = {
    "vae_encode": ("frames", "latents"),
    "vae_decode": ("latents", "frames"),
    "image_prior": ("frames", "prior"),
}


class ParityError(AssertionError):
    """onnxruntime's output differs from torch's by more than the tolerance."""


@dataclass(frozen=True)
class Parity:
    """The largest absolute difference per checked input, and the tolerance held to."""

    diffs: tuple[float, ...]
    atol: float

    @property
    def max_abs_diff(self) -> float:
        return max(self.diffs)

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def resolve_runtime(runtime: str, device: torch.device) -> str:
    """ "torch" or "onnxruntime" for `runtime` ("auto": onnxruntime on the CPU when installed).

    Raises:
        ValueError: Unknown runtime, or "onnxruntime" asked for on a non-CPU device (only CPU
            sessions are built; CUDA stays on torch).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {RUNTIMES}")
    on_cpu = torch.device(device).type == "cpu"
    if runtime == "onnxruntime" and not on_cpu:
        raise ValueError(f"runtime onnxruntime runs on the CPU only, not on {device}")
    if runtime == "auto":
        return "onnxruntime" if on_cpu and onnxruntime_available() else "torch"
    return runtime


def add_runtime_argument(parser, what: str = "VAE") -> None:
    """`--runtime auto|torch|onnxruntime` of the services that run a VAE or image prior."""
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help=f"{what} runtime: auto (default) = onnxruntime on the CPU when installed, the "
        f"graph exported once (cached in ${CACHE_ENV}, default under the temp dir; pruned "
        f"by ${CACHE_MAX_AGE_ENV}, default 30, and ${CACHE_MAX_MIB_ENV}, default 2048) and "
        "checked against torch within 1e-4, else torch; torch; or onnxruntime (CPU only)",
    )


class OnnxGraph:
    """One exported graph on an onnxruntime CPU session.

    Args:
        name: "vae_encode", "vae_decode" or "image_prior".
        path: The graph's `.onnx` file.
        threads: Intra-op threads (None: torch's count, as the services' torch uses).
        module: The torch module it was exported from, for `check_parity` (optional).
    """

    def __init__(
        self,
        name: str,
        path: Path,
        threads: int | None = None,
        module: torch.nn.Module | None = None,
    ):
        if name not in GRAPH_TENSORS:
            raise ValueError(f"unknown graph {name!r}; known: {sorted(GRAPH_TENSORS)}")
        self.name = name
        self.path = Path(path)
        self.input_name, self.output_name = GRAPH_TENSORS[name]
        self.threads = threads or torch.get_num_threads()
        self.module = module
        self.parity: Parity | None = None  # set by `checked_graphs`
        self.session = onnx_session(self.path, self.threads)

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """float32 input (numpy, or a CPU tensor) -> float32 numpy output."""
        if isinstance(x, torch.Tensor):
            x = x.detach().to("cpu", torch.float32).numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        (out,) = self.session.run([self.output_name], {self.input_name: x})
        return out

    def check_parity(
        self, inputs: Sequence[np.ndarray], atol: float = PARITY_ATOL, raise_above: bool = True
    ) -> Parity:
        """Runs each input through this session and through the torch module.

        Raises:
            ValueError: No torch module to compare with.
            ParityError: A shape differs, or (with `raise_above`) a difference exceeds `atol`.
        """
        if self.module is None:
            raise ValueError(f"{self.name}: no torch module to check parity against")
        diffs = []
        for x in inputs:
            got = self(x)
            with torch.inference_mode():
                want = self.module(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
            want = want.float().cpu().numpy()
            if got.shape != want.shape:
                raise ParityError(f"{self.name}: onnx shape {got.shape} != torch {want.shape}")
            diffs.append(float(np.abs(got - want).max()))
        parity = Parity(tuple(diffs), atol)
        if raise_above and not parity.ok:
            raise ParityError(
                f"{self.name}: onnxruntime differs from torch by {parity.max_abs_diff:.2e} "
                f"> {atol:.0e}"
            )
        return parity


def _versions() -> str:
    import onnx

    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:  # exporting needs only torch + onnx
        ort_version = "none"
    return f"torch={torch.__version__} onnx={onnx.__version__} onnxruntime={ort_version}"


def _fingerprint(module: torch.nn.Module, opset: int) -> str:
    """A short hash of the weights, opset and onnx / torch versions: a changed model or
    exporter never reuses a stale export."""
    digest = hashlib.sha256(f"opset={opset} {_versions()} {type(module).__qualname__}".encode())
    for key, tensor in module.state_dict().items():
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _export_to(spec: ExportSpec, path: Path, opset: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    # A name of this process's own, renamed into place: concurrent exporters never write
    # the same file, and readers never see a half-written one.
    fd, partial_name = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=".partial.onnx", dir=path.parent
    )
    os.close(fd)
    partial = Path(partial_name)
    try:
        export_onnx(spec, partial, opset)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    logger.info("exported %s to %s in %.1f s", spec.name, path, time.perf_counter() - began)


def _load_or_export(
    name: str, spec: ExportSpec, cache_dir: Path, threads: int | None, opset: int
) -> tuple[OnnxGraph, bool]:
    """The cached graph of `spec` (touched: used now), exported first when absent; and
    whether it was exported."""
    if spec.name != name:
        raise ValueError(f"spec is {spec.name!r}, asked for {name!r}")
    module = spec.module.eval().requires_grad_(False)
    path = Path(cache_dir) / f"{name}-{_fingerprint(module, opset)}.onnx"
    mark_in_use(path)
    exported = not touch(path)
    if exported:
        _export_to(spec, path, opset)
    try:
        return OnnxGraph(name, path, threads, module), exported
    except Exception:
        if exported or path.is_file():
            raise
        # Pruned by another process between our touch and the load: export it again.
        _export_to(spec, path, opset)
        return OnnxGraph(name, path, threads, module), True


def export_graph(
    name: str,
    spec: ExportSpec,
    cache_dir: Path,
    threads: int | None = None,
    opset: int = DEFAULT_OPSET,
) -> OnnxGraph:
    """`spec` exported (once per weights: `<cache_dir>/<name>-<hash>.onnx`) and loaded; after
    an export the cache is pruned (`onnx_cache.prune_cache`, failures only logged).

    `spec` comes from `onnx_export.vae_specs` / `onnx_export.image_prior_spec`; its module is
    kept on the graph for `check_parity`.
    """
    graph, exported = _load_or_export(name, spec, Path(cache_dir), threads, opset)
    if exported:
        prune_quietly(Path(cache_dir), keep=[graph.path])
    return graph


def _parity_record(graph: OnnxGraph) -> Path:
    return graph.path.with_name(f"{graph.path.stem}.parity-{graph.threads}threads.json")


def _recorded_parity(graph: OnnxGraph, atol: float = PARITY_ATOL) -> Parity | None:
    """A passed check of this very file (its name hashes the weights and the torch / onnx /
    onnxruntime versions) at this thread count, recorded by an earlier load; None when there
    is none (or it is unreadable): restarts skip the torch forwards of the check, seconds for
    TinyViT on a small CPU."""
    try:
        record = json.loads(_parity_record(graph).read_text())
        parity = Parity(tuple(float(d) for d in record["diffs"]), atol)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return parity if parity.diffs and parity.ok else None


def _record_parity(graph: OnnxGraph, parity: Parity) -> None:
    path = _parity_record(graph)
    text = json.dumps({"diffs": list(parity.diffs), "atol": parity.atol, "threads": graph.threads})
    fd, partial = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
        Path(partial).replace(path)
    except OSError as error:  # a read-only cache only costs the check again next time
        logger.warning("could not record the parity of %s: %s", graph.path, error)
        Path(partial).unlink(missing_ok=True)


def parity_inputs(spec: ExportSpec) -> list[np.ndarray]:
    """The spec's own parity inputs: one per `parity_batches` size (the traced size differs)."""
    return [spec.make_input(b, i) for i, b in enumerate(spec.parity_batches)]


def checked_graphs(
    specs: Sequence[ExportSpec],
    cache_dir: Path | None = None,
    threads: int | None = None,
    what: str = "model",
) -> tuple[dict[str, OnnxGraph], str]:
    """Each spec exported (or reused from the cache), loaded and parity-checked on its inputs.

    Returns ({name: graph}, "") when all pass; ({}, reason) on any failure (onnxruntime not
    installed, export error, parity above the tolerance), after logging a warning that names
    the reason: the caller then stays on torch. A passed check is recorded next to the graph
    (`_record_parity`), so a restart on the same weights, versions and thread count reuses
    both the export and the check. After an export the cache is pruned (`onnx_cache.prune_cache`),
    keeping these graphs.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    graphs: dict[str, OnnxGraph] = {}
    name = "?"
    exported = False
    try:
        if not onnxruntime_available():
            raise ImportError("onnxruntime is not installed")
        for spec in specs:
            name = spec.name
            began = time.perf_counter()
            graph, fresh = _load_or_export(spec.name, spec, cache_dir, threads, DEFAULT_OPSET)
            exported |= fresh
            parity = _recorded_parity(graph)
            if parity is None:
                parity = graph.check_parity(parity_inputs(spec))
                _record_parity(graph, parity)
            logger.info(
                "%s: %s on onnxruntime (%s, %d threads), max abs diff to torch %.1e, "
                "ready in %.1f s",
                what,
                spec.name,
                graph.path,
                graph.threads,
                parity.max_abs_diff,
                time.perf_counter() - began,
            )
            graph.parity = parity
            graphs[spec.name] = graph
    except Exception as error:  # noqa: BLE001 - any failure means: stay on torch
        reason = f"{name}: {type(error).__name__}: {error}"
        logger.warning("%s stays on torch, onnxruntime not used: %s", what, reason)
        return {}, reason
    finally:
        if exported:  # after the whole set is loaded: none of it is pruned in between
            prune_quietly(cache_dir, keep=[g.path for g in graphs.values()])
    return graphs, ""


def describe(graphs: dict[str, OnnxGraph]) -> str:
    """`json` of each graph's max abs diff to torch, for info() reporting."""
    return json.dumps(
        {n: float(f"{g.parity.max_abs_diff:.2e}") for n, g in graphs.items() if g.parity}
    )
