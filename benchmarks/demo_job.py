"""The demo's job as the augment and memory benchmarks run it: its services and its options."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from clients.augment.options import AugmentOptions
from clients.augment.sampling_defaults import sampling_defaults
from clients.local_cluster import LocalCluster, available_services
from services.data.phantoms import PHANTOM_NAME
from services.models.generators import generator_dir

MODEL_DIR = Path(__file__).resolve().parents[1] / "deploy" / "model-repository"
CONCURRENCY = 4  # the demo's
BATCH = 4  # the sampler's --max-batch-size default: what 4 clips in flight are batched as


@contextmanager
def start_cluster(log_dir: Path, replicas: int = 2, device: str = "cpu", classes: int = 3):
    """The demo's services (the filter's seeded classifier told the dataset's `classes`),
    `replicas` samplers with their result cache off (the same requests again are computed
    again), every model on `device`."""
    on_device = ["--device", "cuda"] if device == "cuda" else []
    extra = {name: list(on_device) for name in available_services()}
    extra["filter"] += ["--num-classes", str(classes)]
    extra["sampler"] += ["--result-cache-entries", "0"]
    with LocalCluster(
        available_services(), None, log_dir, extra_args=extra, sampler_replicas=replicas
    ) as cluster:
        yield cluster


def demo_job_options(
    data: Path,
    out: Path,
    cluster: LocalCluster,
    samplers: list[str],
    per_class: int = 4,
    steps: int | None = None,
    guidance: float | None = None,
) -> AugmentOptions:
    """The options `genaug demo` runs its job with, for `per_class` clips per class."""
    defaults = sampling_defaults(MODEL_DIR)
    classes = generator_dir(MODEL_DIR) / "classes.json"
    t = cluster.targets()
    return AugmentOptions(
        dataset_root=data,
        name=PHANTOM_NAME,
        out=out,
        per_class=per_class,
        steps=steps or defaults.steps,
        guidance=guidance or defaults.guidance,
        solver=defaults.solver,
        sampler=samplers,
        encoder=t.get("condition_encoder"),
        motion=t.get("motion_extractor"),
        filter=t.get("filter"),
        no_filter="filter" not in t,
        concurrency=CONCURRENCY,
        classes_file=classes if classes.is_file() else None,
        shard_index=0,
        shard_count=1,
        progress=False,
    )
