"""Against stock Triton: our KServe v2 models vs a stock Triton Inference Server on the same ONNX.

Both sides serve the same models under the same names and tensors, exported at run time from
the bundled weights (`deploy/model-repository`) by the project's own exporter (`genaug
export-onnx --triton-layout`, `services/models/onnx_export.py`):

- **project**: the vae_codec and condition_encoder services as local processes on loopback
  (`clients.local_cluster.LocalCluster`, `--device cpu`), their KServe v2 endpoint;
  `vae_encode` is `VaeCodec.encode`, `image_prior` is `ConditionEncoder`'s
  `preprocess_frames` + LiteMedSAM's TinyViT, both on their default `--runtime auto`: on the
  CPU, onnxruntime on the services' own parity-checked export (`services/models/
  onnx_session.py`), torch where that is unavailable (each model's `runtime` parameter).
- **Triton**: PyTriton's bundled tritonserver 2.51 (`nvidia-pytriton==0.7.0`, Python backend)
  in its own virtual environment, `runs/triton-venv` (created here when missing), serving
  `benchmarks/triton_server.py`: the exported ONNX graphs on onnxruntime CPU sessions with the
  same intra-op thread count as the services' torch (`--threads`); `image_prior` runs the
  project's own `preprocess_frames` (the same file, loaded by path) before the graph, so both
  sides take the same raw UINT8 frames and do the same work.

The same tritonclient gRPC client code sends the same inputs to both, at concurrency 1 and 4
(4 requests in flight from 4 clients); the two sides' rounds are interleaved
(`benchmarks.common.interleaved`) and a request's time is the median over rounds of a round's
wall time divided by its requests. A round has each client send several requests in series
(about 0.3 s of them, at most 20): one 15 ms request per round measured mostly how fast an
idle server wakes up (40 vs 32 ms per request for what runs in 14 ms either way). Outputs
are checked equal within 1e-4 (max abs diff in the JSON) before anything is timed. Where the
Triton environment cannot be set up or the server does not start, every row is reported
without a value and with the reason.

PyTriton 0.7.0 needs numpy < 2 (with numpy 2 its Python-backend stub returns empty output
tensors), and numpy 1.26 has no wheels for Python 3.13, so the environment is Python 3.12
(pyenv's, or `--python`; `GENAUG_TRITON_PYTHON`), its libpython put on LD_LIBRARY_PATH for the
stub.

    python -m benchmarks.triton [--repeats 3] [--concurrent-repeats 2] [--quick]
                                [--python /path/to/python3.12]
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import bar_plot, interleaved, machine_facts, median, write_results
from benchmarks.suite import BenchSettings, Row, Section, at_most, text_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
MODEL_DIR = ROOT / "deploy" / "model-repository"
VENV = ROOT / "runs" / "triton-venv"
SERVER_SCRIPT = Path(__file__).resolve().with_name("triton_server.py")
PREPROCESS_FILE = ROOT / "services" / "models" / "medsam_preprocess.py"
PYTHON_VERSION = (3, 12)
# PyTriton's own pins allow these; numpy < 2 is what its Python-backend stub needs.
REQUIREMENTS = (
    "nvidia-pytriton==0.7.0",
    "numpy==1.26.4",
    "onnxruntime==1.32.0",  # the project's
    "opencv-python-headless==4.11.0.86",  # the newest with numpy 1.x wheels
    "tritonclient[grpc,http]==2.73.0",
    "protobuf==6.33.6",
)
TARGET = 1.0
ATOL = 1e-4
CONCURRENCY = (1, 4)
SERVICES = ("vae_codec", "condition_encoder")
READY_TIMEOUT_S = 240.0
ROUND_S = 0.3  # a round's length to aim for (see calls_per_round)
MAX_CALLS = 20


class TritonUnavailable(RuntimeError):
    """A stock Triton cannot be run here; the message says why."""


@dataclass(frozen=True)
class Case:
    """One model and input, sent identically to both sides."""

    model: str
    input_name: str
    output_name: str
    datatype: str
    array: np.ndarray

    @property
    def label(self) -> str:
        return f"{self.model} {tuple(self.array.shape)}"


def cases(quick: bool) -> list[Case]:
    """vae_encode on (8,1,64,64) and (8,1,256,256) frames in [-1,1]; image_prior on 2 raw grey
    UINT8 320x240 frames (resized to 256x192 and padded by the preprocessing)."""
    rng = np.random.default_rng(0)
    vae_shapes = [(1, 1, 64, 64)] if quick else [(8, 1, 64, 64), (8, 1, 256, 256)]
    prior_shape = (1, 64, 48) if quick else (2, 320, 240)
    made = [
        Case("vae_encode", "frames", "latents", "FP32", rng.uniform(-1, 1, s).astype(np.float32))
        for s in vae_shapes
    ]
    frames = rng.integers(0, 256, prior_shape, dtype=np.uint8)
    made.append(Case("image_prior", "frames", "prior", "UINT8", frames))
    return made


# -- the Triton environment -----------------------------------------------------------------
def _version_of(python: str) -> tuple[int, int] | None:
    try:
        done = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    major, minor = done.stdout.split()
    return int(major), int(minor)


def find_python(explicit: str | None = None) -> str:
    """A Python 3.12 interpreter for the Triton environment: `explicit`, else
    $GENAUG_TRITON_PYTHON, else python3.12 on PATH, else pyenv's 3.12.x.

    Raises:
        TritonUnavailable: None of them runs, or the one asked for is not 3.12.
    """
    asked = explicit or os.environ.get("GENAUG_TRITON_PYTHON")
    want = ".".join(map(str, PYTHON_VERSION))
    if asked:
        version = _version_of(asked)
        if version is None:
            raise TritonUnavailable(f"the Triton environment's Python {asked} does not run")
        if version != PYTHON_VERSION:
            raise TritonUnavailable(
                f"{asked} is Python {version[0]}.{version[1]}; PyTriton 0.7.0 needs numpy < 2, "
                f"which needs Python <= {want} here"
            )
        return asked
    pyenv = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates = [shutil.which(f"python{want}")]
    candidates += sorted(glob.glob(f"{pyenv}/versions/{want}.*/bin/python{want}"), reverse=True)
    for candidate in filter(None, candidates):
        if _version_of(candidate) == PYTHON_VERSION:
            return candidate
    raise TritonUnavailable(
        f"no Python {want} found (PATH, {pyenv}/versions); pass --python or set "
        "GENAUG_TRITON_PYTHON"
    )


def _stamp(python: str) -> str:
    return json.dumps({"python": python, "requirements": REQUIREMENTS})


def ensure_venv(python: str, venv: Path = VENV) -> tuple[Path, float]:
    """The Triton environment's interpreter, creating `venv` with REQUIREMENTS when missing or
    made otherwise; and the seconds that took (0 when it was already there).

    Raises:
        TritonUnavailable: The environment could not be created or installed.
    """
    venv_python = venv / "bin" / "python"
    stamp = venv / ".genaug-triton"
    if venv_python.exists() and stamp.is_file() and stamp.read_text() == _stamp(python):
        return venv_python, 0.0
    began = time.perf_counter()
    print(f"triton: creating {venv} with {python} (one-time) ...", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    steps = [
        [python, "-m", "venv", str(venv)],
        [str(venv_python), "-m", "pip", "install", "--quiet", *REQUIREMENTS],
    ]
    for command in steps:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise TritonUnavailable(f"{' '.join(command[:4])} ...: {error}") from None
        if done.returncode != 0:
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-4:])
            raise TritonUnavailable(
                f"{' '.join(command[:4])} ... exited with {done.returncode}: {tail}"
            )
    stamp.write_text(_stamp(python))
    return venv_python, time.perf_counter() - began


def _libdir(venv_python: Path) -> str:
    """The interpreter's shared libpython folder (the Python-backend stub links libpython)."""
    done = subprocess.run(
        [
            str(venv_python),
            "-c",
            "import sysconfig as s; print(s.get_config_var('Py_ENABLE_SHARED') or 0, "
            "s.get_config_var('LIBDIR'))",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    shared, _, libdir = done.stdout.strip().partition(" ")
    if done.returncode != 0 or shared != "1":
        raise TritonUnavailable(
            f"{venv_python} has no shared libpython (built without --enable-shared), which "
            "tritonserver's Python-backend stub links"
        )
    return libdir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StockTriton:
    """`triton_server.py` under the Triton environment's Python, on loopback ports."""

    def __init__(self, venv_python: Path, model_repository: Path, work: Path, threads: int):
        self.venv_python = venv_python
        self.model_repository = model_repository
        self.work = work
        self.threads = threads
        self.grpc_port = _free_port()
        self.log_path = work / "triton.log"
        self.process: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text[-lines:] if line.strip())

    def start(self) -> None:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = ":".join(
            filter(None, [_libdir(self.venv_python), env.get("LD_LIBRARY_PATH")])
        )
        for variable in ("PYTHONPATH", "PYTHONHOME"):  # nothing of the project's environment
            env.pop(variable, None)
        command = [
            str(self.venv_python),
            str(SERVER_SCRIPT),
            "--model-repository",
            str(self.model_repository),
            "--preprocess",
            str(PREPROCESS_FILE),
            "--grpc-port",
            str(self.grpc_port),
            "--http-port",
            str(_free_port()),
            "--metrics-port",
            str(_free_port()),
            "--threads",
            str(self.threads),
            "--workspace",
            str(self.work / "pytriton-workspace"),
        ]
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def wait_ready(self, models: list[str], timeout: float = READY_TIMEOUT_S) -> None:
        """Until every model reports ready ("Failed to initialize NVML" and DCGM warnings in
        the log are harmless on a machine without a GPU).

        Raises:
            TritonUnavailable: The server exited, or was not ready in time.
        """
        import tritonclient.grpc as tc

        end = time.monotonic() + timeout
        client = tc.InferenceServerClient(self.target)
        try:
            while True:
                if self.process.poll() is not None:
                    raise TritonUnavailable(
                        f"tritonserver exited with code {self.process.returncode} before it "
                        f"was ready; last log lines: {self.log_tail()}"
                    )
                try:
                    if all(client.is_model_ready(m) for m in models):
                        return
                except Exception:  # not listening yet, or models still loading
                    pass
                if time.monotonic() > end:
                    raise TritonUnavailable(
                        f"tritonserver not ready after {timeout:.0f} s; last log lines: "
                        f"{self.log_tail()}"
                    )
                time.sleep(0.5)
        finally:
            client.close()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (PyTriton stops tritonserver and its stubs), then SIGKILL its process group."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        # The group this process leads: tritonserver and its stubs, if any are left.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


# -- export and the project side ------------------------------------------------------------
def export_models(out: Path) -> float:
    """`genaug export-onnx --triton-layout --models vae_encode image_prior` into `out`; seconds."""
    from services.models import onnx_export

    parser = argparse.ArgumentParser()
    onnx_export.add_arguments(parser)
    args = parser.parse_args(
        ["--model-dir", str(MODEL_DIR), "--out", str(out), "--triton-layout"]
        + ["--models", "vae_encode", "image_prior"]
    )
    began = time.perf_counter()
    if onnx_export.run(args) != 0:
        raise RuntimeError("genaug export-onnx failed")
    return time.perf_counter() - began


def _start_in_background(start: Callable[[], None]) -> Callable[[], None]:
    """Runs `start` on a thread; the returned call waits for it and re-raises its error."""
    errors: list[BaseException] = []

    def target():
        try:
            start()
        except BaseException as error:  # handed to the caller
            errors.append(error)

    thread = threading.Thread(target=target, name="start-services", daemon=True)
    thread.start()

    def join():
        thread.join()
        if errors:
            raise errors[0]

    return join


# -- measuring ------------------------------------------------------------------------------
def _infer(client, case: Case) -> np.ndarray:
    import tritonclient.grpc as tc

    tensor = tc.InferInput(case.input_name, list(case.array.shape), case.datatype)
    tensor.set_data_from_numpy(case.array)
    wanted = [tc.InferRequestedOutput(case.output_name)]
    result = client.infer(case.model, [tensor], outputs=wanted, client_timeout=600)
    return result.as_numpy(case.output_name)


def _round(clients: list, case: Case, concurrency: int, pool: ThreadPoolExecutor, calls: int):
    """Each of `concurrency` clients sends `calls` requests one after another."""

    def client_calls(client):
        for _ in range(calls):
            _infer(client, case)

    if concurrency == 1:
        client_calls(clients[0])
        return
    futures = [pool.submit(client_calls, clients[i]) for i in range(concurrency)]
    for future in futures:
        future.result()


def calls_per_round(seconds_per_call: float) -> int:
    """Requests per client per round so a round lasts about ROUND_S: a round of one 15 ms
    request measures mostly the wake-up of an idle server, not its serving."""
    return max(1, min(MAX_CALLS, math.ceil(ROUND_S / max(seconds_per_call, 1e-6))))


def measure(
    clients: dict[str, list], case: Case, repeats: dict[int, int], pool: ThreadPoolExecutor
) -> dict:
    """Parity first, then each concurrency's interleaved rounds (skipped when they differ)."""
    outputs, first_call = {}, {}
    for side, c in clients.items():
        began = time.perf_counter()
        outputs[side] = _infer(c[0], case)
        first_call[side] = time.perf_counter() - began
    calls = calls_per_round(max(first_call.values()))
    project, triton = outputs["project"], outputs["triton"]
    same_shape = project.shape == triton.shape
    diff = float(np.abs(project - triton).max()) if same_shape else None
    entry = {
        "input": {"shape": list(case.array.shape), "datatype": case.datatype},
        "output_shape": {side: list(o.shape) for side, o in outputs.items()},
        "max_abs_diff": diff,
        "equal_within_atol": diff is not None and diff <= ATOL,
        "calls_per_client_per_round": calls,
        "concurrency": {},
    }
    if not entry["equal_within_atol"]:
        return entry
    for concurrency in CONCURRENCY:
        variants = {
            side: (lambda c=c, n=concurrency: _round(c, case, n, pool, calls))
            for side, c in clients.items()
        }
        times = interleaved(variants, repeats[concurrency])
        per_request = {side: median(t) / (concurrency * calls) for side, t in times.items()}
        entry["concurrency"][str(concurrency)] = {
            "rounds": repeats[concurrency],
            "round_seconds": times,
            "seconds_per_request": per_request,
            "requests_per_second": {s: 1 / v for s, v in per_request.items()},
            "ratio_project_over_triton": per_request["project"] / per_request["triton"],
        }
    return entry


def run(
    out_dir: Path,
    repeats: int = 3,
    concurrent_repeats: int = 3,
    threads: int = 2,
    quick: bool = False,
    python: str | None = None,
    venv: Path = VENV,
) -> dict:
    """The whole comparison; writes `<out_dir>/triton.json` and `.png` and returns the results
    (with "skipped": the reason, and no figures, where no stock Triton could be run)."""
    import tritonclient.grpc as tc

    from clients.local_cluster import LocalCluster

    began = time.perf_counter()
    chosen = cases(quick)
    rounds = {1: 1, 4: 1} if quick else {1: repeats, 4: concurrent_repeats}
    results: dict = {
        "machine": machine_facts(),
        "threads": threads,
        "atol": ATOL,
        "cases": {c.label: {"model": c.model} for c in chosen},
        "project": "vae_codec + condition_encoder services (--device cpu, --runtime auto), "
        "KServe v2",
        "triton": "PyTriton 0.7.0's tritonserver 2.51, Python backend, onnxruntime CPU",
    }
    try:
        interpreter = find_python(python)
        venv_python, setup_seconds = ensure_venv(interpreter, venv)
        results["environment"] = {
            "python": interpreter,
            "venv": str(venv),
            "requirements": list(REQUIREMENTS),
            "setup_seconds": round(setup_seconds, 1),
        }
    except TritonUnavailable as error:
        return _skipped(results, str(error), out_dir, began)
    with tempfile.TemporaryDirectory(prefix="genaug-bench-triton-") as tmp:
        work = Path(tmp)
        cpu = {name: ["--device", "cpu"] for name in SERVICES}
        cluster = LocalCluster(list(SERVICES), None, work / "logs", extra_args=cpu)
        triton = StockTriton(venv_python, work / "onnx", work, threads)
        try:
            started = time.perf_counter()
            services_started = _start_in_background(cluster.start)
            reason = None
            try:
                results["export_seconds"] = round(export_models(work / "onnx"), 1)
                triton.start()
                triton.wait_ready(["vae_encode", "image_prior"])
            except TritonUnavailable as error:
                reason = str(error)
            finally:
                services_started()
            if reason is not None:
                return _skipped(results, reason, out_dir, began)
            results["startup_seconds"] = round(time.perf_counter() - started, 1)
            project = {
                "vae_encode": cluster.services["vae_codec"].target,
                "image_prior": cluster.services["condition_encoder"].target,
            }
            width = max(CONCURRENCY)
            with ThreadPoolExecutor(width) as pool:
                for case in chosen:
                    addresses = {"project": project[case.model], "triton": triton.target}
                    clients = {
                        side: [tc.InferenceServerClient(a) for _ in range(width)]
                        for side, a in addresses.items()
                    }
                    try:
                        for client in (c for side in clients.values() for c in side):
                            client.is_server_live()  # connected before anything is timed
                        results["cases"][case.label] |= measure(clients, case, rounds, pool)
                    finally:
                        for client in (c for side in clients.values() for c in side):
                            client.close()
        finally:
            try:
                triton.stop()
            finally:
                cluster.stop()
    return _finish(results, out_dir, began)


def _skipped(results: dict, reason: str, out_dir: Path, began: float) -> dict:
    print(f"triton: skipped: {reason}", flush=True)
    results["skipped"] = reason
    return _finish(results, out_dir, began)


def _finish(results: dict, out_dir: Path, began: float) -> dict:
    after = machine_facts()
    results["load_after"] = {k: after[k] for k in ("load_1m", "load_5m")}
    results["seconds"] = round(time.perf_counter() - began, 1)
    write_results(out_dir, "triton", results)
    groups = {
        label: {
            f"concurrency {n}": per["ratio_project_over_triton"]
            for n, per in entry.get("concurrency", {}).items()
        }
        for label, entry in results["cases"].items()
    }
    if any(groups.values()):
        bar_plot(out_dir, "triton", groups, "project / Triton seconds per request")
    return results


def _what_each_side_does(model: str, threads: int) -> str:
    if model == "image_prior":
        return (
            "both get raw UINT8 frames and run preprocess_frames; project: TinyViT (--runtime "
            "auto), "
            f"Triton: its ONNX on onnxruntime, {threads} threads"
        )
    return (
        "project: VaeCodec.encode (--runtime auto), "
        f"Triton: its ONNX on onnxruntime, {threads} threads"
    )


def rows(results: dict) -> list[Row]:
    out = []
    skipped = results.get("skipped")
    for label, entry in results["cases"].items():
        for n in CONCURRENCY:
            metric = f"{label} c={n}: project / Triton"
            per = entry.get("concurrency", {}).get(str(n))
            if skipped or per is None:
                why = skipped or (
                    f"outputs differ: max abs diff {entry.get('max_abs_diff')} > {ATOL:.0e} "
                    f"(shapes {entry.get('output_shape')})"
                )
                out.append(Row("triton", metric, None, "x", f"<= {TARGET}", None, why))
                continue
            ratio = per["ratio_project_over_triton"]
            seconds = per["seconds_per_request"]
            note = (
                f"project {seconds['project'] * 1e3:.0f} ms, Triton {seconds['triton'] * 1e3:.0f}"
                f" ms per request, median of {per['rounds']} rounds of "
                f"{entry.get('calls_per_client_per_round', 1)} per client; max abs diff "
                f"{entry['max_abs_diff']:.1e}; "
                + _what_each_side_does(entry["model"], results["threads"])
            )
            out.append(
                Row("triton", metric, ratio, "x", f"<= {TARGET}", at_most(ratio, TARGET), note)
            )
    return out


def _section(settings: BenchSettings) -> list[Row]:
    if settings.device != "cpu":
        print("triton: compares CPU against CPU (onnxruntime's CPU provider); --device ignored")
    return rows(run(settings.out_dir, threads=settings.threads, quick=settings.quick))


SECTION = Section(
    "triton",
    "Against stock Triton: our KServe v2 models vs tritonserver on the same ONNX",
    _section,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds at concurrency 1")
    parser.add_argument("--concurrent-repeats", type=int, default=3, help="rounds at 4")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--quick", action="store_true", help="tiny inputs, one round")
    parser.add_argument("--python", help="Python 3.12 for the Triton environment")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = run(
        args.out, args.repeats, args.concurrent_repeats, args.threads, args.quick, args.python
    )
    print(f"machine: {results['machine']}")
    print(text_table(rows(results)))
    print(f"section {results['seconds']} s; wrote {args.out / 'triton.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
