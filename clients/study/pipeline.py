"""`genaug study` end to end: regimes, their models, synthesis, the arms' classifiers, audit.

Phases (each resumable from what it wrote under `--out`):

1. conditions of the training clips (motion, prior; in process, as `genaug conditions`);
2. regimes (low-data fraction, full) and their training-only views;
3. models: the shared VAE, then per regime the filter classifier, 2D LDM and sequence LDM;
4. per regime: the five services on its models, `genaug augment` for the pool, the filter
   service's verdicts under every filter configuration;
5. every (regime, arm, seed) classifier, evaluated in-domain and out-of-domain;
6. audit (fidelity, VAE-Seq, Frechet distance on classifier features, memorisation) and report.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from clients.study import arms as arms_mod
from clients.study import audit, generator, regimes, report, runs, synthesis, views
from clients.study.classify import ClassifierRecipe, write_json
from services.data import layout

logger = logging.getLogger(__name__)


@dataclass
class StudyConfig:
    """Everything a study depends on (recorded in `<out>/config.json`)."""

    dataset_root: Path
    name: str
    out: Path
    ood_root: Path | None = None
    ood_name: str | None = None
    low_fraction: float = 0.25
    seeds: int = 5
    arms: tuple[str, ...] = arms_mod.DEFAULT_ARMS
    pool_per_class: dict[str, int] = field(default_factory=lambda: {"low": 24, "full": 36})
    synthetic_cap: int | None = None
    sampling_steps: int = 25
    guidance: float = 3.0
    concurrency: int = 4
    generator: generator.GeneratorRecipe = field(default_factory=generator.GeneratorRecipe)
    classifier: ClassifierRecipe = field(default_factory=ClassifierRecipe)
    workers: int = 2
    threads: int = 1
    subset_seed: int = 0
    progress: bool = True

    def record(self) -> dict:
        data = asdict(self)
        return json.loads(json.dumps(data, default=str))


class Timer:
    """Wall seconds per phase for the report's budget table, summed over every run of the
    study folder (a resumed run adds what it spent; a finished phase adds about nothing)."""

    def __init__(self, path: Path):
        self.path = path
        self.phases: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}

    def phase(self, name: str):
        timer = self

        class _Phase:
            def __enter__(self):
                self.began = time.perf_counter()
                logger.info("study: %s", name)

            def __exit__(self, *exc):
                timer.phases[name] = timer.phases.get(name, 0.0) + time.perf_counter() - self.began
                write_json(timer.path, timer.phases)

        return _Phase()


def _conditions(cfg: StudyConfig, files: set[str]) -> None:
    """Motion and prior of the training clips the regimes use (never the test split's)."""
    from services.data.conditions import condition_paths, precompute
    from services.models.conditions import InProcessConditions

    missing = [
        f
        for f in files
        if not all(
            p.is_file() for p in vars(condition_paths(cfg.dataset_root, cfg.name, f)).values()
        )
    ]
    if missing:
        precompute(
            cfg.dataset_root,
            cfg.name,
            ["train"],
            ["motion", "prior"],
            InProcessConditions("codec"),
            progress=cfg.progress,
        )


def _in_parallel(calls: list, workers: int) -> list:
    """[(function, args)] -> their results in order, in up to `workers` spawned processes (one
    thread each: 2 single-thread processes beat one 2-thread process on 2 busy cores)."""
    if workers <= 1 or len(calls) <= 1:
        return [function(*args) for function, args in calls]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(calls)), mp_context=context) as executor:
        futures = [executor.submit(function, *args) for function, args in calls]
        return [future.result() for future in futures]


def run_study(cfg: StudyConfig) -> Path:
    """Run (or continue) the study; returns the report's path."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", cfg.record())
    timer = Timer(out / "timings.json")
    arm_list = arms_mod.arms_named(list(cfg.arms))
    train = layout.load_dataset(cfg.dataset_root, cfg.name, "train")
    classes = train.classes
    chosen = {
        regimes.LOW: regimes.select_regime(train, regimes.LOW, cfg.low_fraction, cfg.subset_seed),
        regimes.FULL: regimes.select_regime(train, regimes.FULL, 1.0, cfg.subset_seed),
    }
    regime_dirs = {r: out / "regimes" / r for r in chosen}
    view_dirs = {}
    vae_run = out / "models" / "vae"
    vae_dir = vae_run / "final"
    models: dict[str, dict] = {}
    with timer.phase("conditions + VAE"):
        # The VAE needs only slices: it trains in a worker while the conditions are computed.
        vae_args = (cfg.dataset_root, cfg.name, chosen[regimes.LOW], regime_dirs[regimes.LOW])
        if cfg.workers > 1 and not generator.finished(vae_run):
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(1, mp_context=context) as executor:
                future = executor.submit(_vae, *vae_args, vae_run, cfg.generator)
                _conditions(cfg, set(chosen[regimes.FULL].file_names))
                models["vae"] = future.result()
        else:
            _conditions(cfg, set(chosen[regimes.FULL].file_names))
            models["vae"] = _vae(*vae_args, vae_run, cfg.generator)
    for r, regime in chosen.items():
        view_dirs[r] = views.make_view(
            cfg.dataset_root, cfg.name, set(regime.file_names), regime_dirs[r] / "view"
        )
    with timer.phase("regime models"):
        calls = [
            (generator.train_regime_models, (view_dirs[r], cfg.name, regime_dirs[r], vae_dir,
                                             cfg.generator))
            for r in chosen
        ]  # fmt: skip
        repos = {}
        stages = [regime_dirs[r] / stage for r in chosen for stage in ("classifier", "ldm", "seq")]
        workers = 1 if generator.finished(*stages) else cfg.workers
        for r, summary in zip(chosen, _in_parallel(calls, workers), strict=True):
            models[r] = summary
            repos[r] = generator.model_repository(
                regime_dirs[r], vae_dir, cfg.sampling_steps, cfg.guidance
            )
    pools, judgements = {}, {}
    with timer.phase("synthesis"):
        for r in chosen:
            pools[r], judgements[r] = synthesis.synthesize(
                view_dirs[r],
                cfg.name,
                repos[r],
                regime_dirs[r],
                cfg.pool_per_class[r],
                cfg.sampling_steps,
                cfg.guidance,
                cfg.concurrency,
            )
    tests = {"in_domain": (cfg.dataset_root, cfg.name, "test")}
    if cfg.ood_root is not None and cfg.ood_name:
        tests["out_of_domain"] = (cfg.ood_root, cfg.ood_name, "test")
    specs, draws, skipped = [], {}, {}
    for r in chosen:
        pool, filters = pools[r], judgements[r]["filters"]
        n, skipped[r] = arms_mod.synthetic_per_class(
            arm_list, pool.ids, pool.labels, filters, len(classes), cfg.synthetic_cap
        )
        draws[r] = n
        for index, arm in enumerate(arm_list):
            if arm.name in skipped[r]:
                continue
            eligible = arms_mod.eligible(arm, pool.ids, pool.labels, filters)
            for seed in range(cfg.seeds):
                ids = arms_mod.draw(index, seed, eligible, n) if arm.synthetic and n else []
                specs.append(
                    runs.spec(
                        regime=r,
                        arm=arm,
                        seed=seed,
                        view=view_dirs[r],
                        regime_dir=regime_dirs[r],
                        name=cfg.name,
                        classes=classes,
                        synthetic_ids=ids,
                        recipe=cfg.classifier,
                        tests=tests,
                        out=out,
                        threads=cfg.threads,
                    )
                )
    with timer.phase("classifiers"):
        results = runs.run_all(specs, cfg.workers, cfg.progress)
    with timer.phase("audit"):
        audits = _audit(cfg, chosen, view_dirs, pools, judgements, classes)
    with timer.phase("report"):
        document = report.Study(
            config=cfg.record(),
            classes=classes,
            minority=min(train.class_counts().items(), key=lambda kv: (kv[1], kv[0]))[0],
            regimes={r: asdict(g) for r, g in chosen.items()},
            models=models,
            synthetic_per_class=draws,
            skipped_arms=skipped,
            pool_seconds={r: judgements[r]["seconds"] for r in chosen},
            arms=[asdict(a) for a in arm_list],
            results=results,
            audits=audits,
            tests={k: [str(v[0]), v[1], v[2]] for k, v in tests.items()},
            timings=timer.phases,
            test_counts=_test_counts(tests),
        )
        path = report.write(document, out / "report")
    return path


def _vae(root: Path, name: str, regime, folder: Path, out: Path, recipe) -> dict:
    """The shared VAE on the low-data view (written first: it holds slices only until the
    conditions are computed, and the VAE needs no conditions)."""
    view = views.make_view(root, name, set(regime.file_names), folder / "view")
    return generator.train_vae(view, name, out, recipe)


def _test_counts(tests: dict) -> dict:
    return {k: layout.load_dataset(r, n, s).class_counts() for k, (r, n, s) in tests.items()}


def _audit(cfg, chosen, view_dirs, pools, judgements, classes) -> dict:
    from services.models.classifier import VideoClassifier
    from services.models.training.data import load_clips

    judge_dir = Path(cfg.out) / "regimes" / regimes.FULL / "classifier" / "final"
    judge = VideoClassifier.from_pretrained(judge_dir)
    test = load_clips(cfg.dataset_root, cfg.name, "test", classes)
    audits = {}
    for r in chosen:
        real = load_clips(view_dirs[r], cfg.name, "train", classes)
        audits[r] = audit.audit_regime(
            judge,
            classes,
            pools[r],
            real.frames,
            real.labels,
            list(real.file_names),
            test.frames,
            test.labels,
            judgements[r],
        )
        audits[r]["acceptance"] = audit.acceptance(
            judgements[r]["filters"], pools[r].labels, classes
        )
        audits[r]["pool_size"] = int(len(pools[r].ids))
        audits[r]["pool_counts"] = {
            c: int((pools[r].labels == i).sum()) for i, c in enumerate(classes)
        }
    audits["judge"] = str(judge_dir)
    audits["judge_trained_on"] = "the full regime's training view"
    return audits


__all__ = ["StudyConfig", "run_study"]
