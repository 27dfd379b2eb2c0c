"""Pool-level decisions of the noisy-data filter, on numbers only (no networks, no gRPC).

Per clip the filter has a cross-entropy against its intended label, a VAE-Seq score and the
per-frame latent vectors. The levels, in the order a clip is rejected by the first that rejects:

1. semantic: keep if cross-entropy <= alpha x mean cross-entropy of the clip's case;
2. sequential (VAE-Seq): 1-D K-means (k=4, seed 3407, n_init 10) over the whole pool's VAE-Seq
   values; low = midpoint of the two lowest centroids, high = midpoint of the two highest; keep
   inside [low, high]. Above is a near-static clip, below an incoherent one. A pool with fewer
   than k distinct values cannot be clustered: the band is not applied and every verdict carries
   a `note:` saying so (with exactly k distinct values each point is its own centroid, so the
   lowest and the highest clip are rejected: the rule as the reference defines it).
   That pool-wide band is the reference (`band_scope="pool"`). In a small pool mixing classes, a
   class whose motion differs (e.g. stronger contraction, so lower VAE-Seq) can fall below it
   as a whole; with `band_scope="class"` the same K-means band is fitted per class label on that
   class's clips only, and each clip is judged against its class's band (a class with fewer than
   k distinct values gets no band, and the `note:` goes to that class's verdicts only). The
   pool-wide band is fitted and reported in both scopes;
3. duplicate: within a case, in pool order, a clip that survived 1 and 2 is kept unless the mean
   per-frame cosine similarity of its latents to an already kept clip is >= the threshold (0.98;
   the reference compared against 98, which never fires).

Reasons are `<level>: <detail>` strings (level = semantic, sequential, duplicate); the first one
of a rejected clip is why it was rejected (a sequential reason names its band: `band [...]` for
the pool-wide one, `class <label> band [...]` for a class's). `note: <detail>` entries are
informational. Skipping a level only stops it rejecting: every score is still computed and
reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.cluster import KMeans

K = 4
KMEANS_SEED = 3407
DEFAULT_ALPHA = 1.0
DEFAULT_DUPLICATE_THRESHOLD = 0.98
BAND_SCOPES = ("pool", "class")
REFERENCE_SCOPE = "reference"  # bands given by the caller, not fitted on the pool
_NORM_FLOOR = 1e-12


def frame_vectors(latents: np.ndarray) -> np.ndarray:
    """Latents (T, ...) -> (T, D) float32 unit vectors, one per frame (a zero frame stays 0)."""
    flat = np.asarray(latents, np.float64).reshape(len(latents), -1)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return (flat / np.maximum(norms, _NORM_FLOOR)).astype(np.float32)


def vae_seq(vectors: np.ndarray) -> float:
    """100 x mean cosine similarity of consecutive frames, from `frame_vectors` (T >= 2)."""
    v = np.asarray(vectors, np.float64)
    if len(v) < 2:
        raise ValueError("vae_seq needs at least 2 frames")
    return float(100.0 * np.mean(np.sum(v[1:] * v[:-1], axis=1)))


def clip_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-frame cosine similarity of two clips' `frame_vectors` (same T)."""
    return float(np.mean(np.sum(np.asarray(a, np.float64) * np.asarray(b, np.float64), axis=1)))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row cross-entropy (float64) of logits (B, C) against integer labels (B,)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    labels = np.asarray(labels, np.int64)
    return log_norm - z[np.arange(len(z)), labels]


@dataclass(frozen=True)
class PoolOptions:
    """How a pool is filtered.

    Attributes:
        alpha: Semantic level: keep if cross-entropy <= alpha x the case mean.
        duplicate_threshold: Duplicate level: cosine similarity at or above which a clip is a
            near-duplicate of an earlier kept clip of its case.
        semantic, sequential, duplicates: Whether each level may reject.
        k, seed: The K-means of the sequential band.
        band_scope: "pool" (the reference): one sequential band over the whole pool; "class":
            one band per class label, fitted on that class's clips; "reference": the per-class
            bands given in `reference_bands` (from real clips: `services.filter.reference_band`).
        reference_bands: (label, Band) pairs for band_scope "reference".
    """

    alpha: float = DEFAULT_ALPHA
    duplicate_threshold: float = DEFAULT_DUPLICATE_THRESHOLD
    semantic: bool = True
    sequential: bool = True
    duplicates: bool = True
    k: int = K
    seed: int = KMEANS_SEED
    band_scope: str = "pool"
    reference_bands: tuple[tuple[int, Band], ...] = ()

    def __post_init__(self) -> None:
        if self.band_scope not in (*BAND_SCOPES, REFERENCE_SCOPE):
            raise ValueError(
                f"band_scope must be one of {BAND_SCOPES} or {REFERENCE_SCOPE!r} (with "
                f"reference_bands), got {self.band_scope!r}"
            )


@dataclass
class ClipScores:
    """What the pool logic needs of one clip.

    Attributes:
        vectors: (T, D) unit per-frame latent vectors (`frame_vectors`).
        label: The class the clip was generated for (groups the per-class sequential bands).
    """

    clip_id: str
    case_id: str
    cross_entropy: float
    vae_seq: float
    vectors: np.ndarray
    label: int = 0


@dataclass
class Verdict:
    """Keep or reject one clip, with every score.

    Attributes:
        max_duplicate_similarity: Highest similarity to a kept clip earlier in the same case
            (0.0 when there is none).
        rejected_by: "semantic", "sequential", "duplicate", or None when kept.
        duplicate_of: The kept clip this one duplicates (duplicate rejections only).
    """

    clip_id: str
    keep: bool
    cross_entropy: float
    vae_seq: float
    max_duplicate_similarity: float = 0.0
    reasons: list[str] = field(default_factory=list)
    rejected_by: str | None = None
    duplicate_of: str | None = None


@dataclass(frozen=True)
class Band:
    """The sequential keep band [low, high]; (-inf, inf) when not applied."""

    low: float
    high: float
    applied: bool
    centroids: tuple[float, ...] = ()
    note: str = ""

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass
class PoolResult:
    """Verdicts in pool order and the bands behind them.

    Attributes:
        band: The pool-wide sequential band (always fitted; applied with band_scope "pool").
        class_bands: Label -> that class's band, in label order (band_scope "class" only;
            empty otherwise).
    """

    verdicts: list[Verdict]
    band: Band
    case_mean_cross_entropy: dict[str, float]
    class_bands: dict[int, Band] = field(default_factory=dict)


def vae_seq_band(
    values: Sequence[float], k: int = K, seed: int = KMEANS_SEED, label: int | None = None
) -> Band:
    """1-D K-means band over VAE-Seq values: the pool's, or class `label`'s (see the module
    docstring)."""
    values = np.asarray(values, np.float64).reshape(-1, 1)
    distinct = int(np.unique(values).size)
    if distinct < k:
        which, where = ("", "the pool") if label is None else (f" of class {label}", "the class")
        return Band(
            -math.inf,
            math.inf,
            False,
            note=f"note: sequential band{which} not applied: {distinct} distinct vae_seq "
            f"value(s) in {where}, K-means needs at least k={k}",
        )
    kmeans = KMeans(n_clusters=k, random_state=seed, n_init=10).fit(values)
    c = np.sort(kmeans.cluster_centers_.ravel())
    return Band(float((c[0] + c[1]) / 2), float((c[-2] + c[-1]) / 2), True, tuple(map(float, c)))


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def judge_pool(clips: Sequence[ClipScores], options: PoolOptions | None = None) -> PoolResult:
    """Verdicts for a pool, in the order of `clips` (the algorithm behind the FilterPool RPC)."""
    opts = options or PoolOptions()
    verdicts = [Verdict(c.clip_id, True, float(c.cross_entropy), float(c.vae_seq)) for c in clips]

    by_case: dict[str, list[int]] = {}
    for i, c in enumerate(clips):
        by_case.setdefault(c.case_id, []).append(i)
    case_mean = {
        case: float(np.mean([clips[i].cross_entropy for i in members]))
        for case, members in by_case.items()
    }

    def reject(i: int, level: str, reason: str) -> None:
        v = verdicts[i]
        if v.keep:
            v.keep, v.rejected_by = False, level
            v.reasons.insert(0, reason)

    # 1. Semantic.
    if opts.semantic:
        alpha = round(float(opts.alpha), 4)
        for i, c in enumerate(clips):
            mean = case_mean[c.case_id]
            if not c.cross_entropy <= opts.alpha * mean:
                reject(
                    i,
                    "semantic",
                    f"semantic: cross-entropy {_fmt(c.cross_entropy)} > {alpha!r} x case mean "
                    f"{_fmt(mean)}",
                )

    # 2. Sequential: the bands are fitted on every clip of the pool (or of the class), whatever
    # the other levels say. The pool-wide band is always fitted and reported.
    band = vae_seq_band([c.vae_seq for c in clips], opts.k, opts.seed)
    class_bands: dict[int, Band] = {}
    if opts.band_scope in ("class", REFERENCE_SCOPE):
        by_label: dict[int, list[int]] = {}
        for i, c in enumerate(clips):
            by_label.setdefault(int(c.label), []).append(i)
        given = dict(opts.reference_bands)
        for label in sorted(by_label):
            values = [clips[i].vae_seq for i in by_label[label]]
            if opts.band_scope == "class":
                class_bands[label] = vae_seq_band(values, opts.k, opts.seed, label)
            else:
                class_bands[label] = given.get(label) or Band(
                    -math.inf, math.inf, False, note=f"note: no reference band for class {label}"
                )
        groups = [(by_label[b], class_bands[b], f"class {b} band") for b in sorted(by_label)]
    else:
        groups = [(range(len(clips)), band, "band")]
    if opts.sequential:
        for members, group_band, name in groups:
            if not group_band.applied:
                for i in members:
                    verdicts[i].reasons.append(group_band.note)
                continue
            where = f"{name} [{group_band.low:.1f}, {group_band.high:.1f}]"
            for i in members:
                value = clips[i].vae_seq
                if value > group_band.high:
                    reject(
                        i, "sequential", f"sequential: vae_seq {value:.1f} above {where} (static)"
                    )
                elif value < group_band.low:
                    reject(
                        i,
                        "sequential",
                        f"sequential: vae_seq {value:.1f} below {where} (incoherent)",
                    )

    # 3. Near-duplicates within each case, greedy in pool order against the kept clips.
    for members in by_case.values():
        kept: list[int] = []
        for i in members:
            best, best_j = 0.0, None
            for j in kept:
                sim = clip_similarity(clips[i].vectors, clips[j].vectors)
                if best_j is None or sim > best:
                    best, best_j = sim, j
            verdicts[i].max_duplicate_similarity = best
            if not verdicts[i].keep:
                continue
            if opts.duplicates and best_j is not None and best >= opts.duplicate_threshold:
                other = clips[best_j].clip_id
                reject(
                    i,
                    "duplicate",
                    f"duplicate: near-duplicate of {other} "
                    f"(cosine {best:.3f} >= {opts.duplicate_threshold:g})",
                )
                verdicts[i].duplicate_of = other
            else:
                kept.append(i)
    return PoolResult(verdicts, band, case_mean, class_bands)
