"""Generation quality and the memorisation audit of a regime's synthetic pool.

- Class fidelity: a judge classifier (the full regime's real-only filter classifier, which saw
  the full training split and nothing else) must assign each synthetic clip to the class it was
  generated for; its accuracy on the real test split is reported next to it as the ceiling.
- VAE-Seq of synthetic vs real training clips, per class (from the filter service).
- A Frechet distance between Gaussian fits of the judge's clip features ("FVD-style", not FVD:
  our small classifier's features, not I3D's) of synthetic clips and real test clips, next to
  the same distance between the regime's real training clips and the test clips (the floor a
  perfect generator would reach with that many clips).
- Memorisation: each synthetic clip's nearest real training clip in pixel space
  (`services.models.clip_distance`, the filter's definition) and in the judge's feature space,
  against the distribution of real test clips' nearest training clips. A synthetic clip closer
  than the closest real test clip (the minimum of that distribution) is flagged as a
  near-copy; the filter's memorisation level (threshold calibrated on training clips only) is
  reported with it.
"""

from __future__ import annotations

import numpy as np

from clients.study.classify import clip_features, to_model_input
from clients.study.metrics import frechet_distance
from services.models.classifier import VideoClassifier
from services.models.clip_distance import nearest, signature
from services.models.training.classifier import predict


def _signatures(frames: np.ndarray) -> np.ndarray:
    return np.stack([signature(f.astype(np.float32) / 127.5 - 1.0) for f in frames])


def _feature_nearest(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    d = np.sqrt(
        np.maximum(
            (queries**2).sum(1)[:, None]
            + (references**2).sum(1)[None]
            - 2 * queries @ references.T,
            0.0,
        )
    )
    return d.min(axis=1)


def _summary(values: np.ndarray) -> dict:
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {"n": 0}
    q = np.percentile(v, [0, 5, 50, 95, 100])
    return {"n": int(v.size), "min": q[0], "p5": q[1], "median": q[2], "p95": q[3], "max": q[4]}


def audit_regime(
    judge: VideoClassifier,
    classes: list[str],
    pool,
    train_frames: np.ndarray,
    train_labels: np.ndarray,
    train_files: list[str],
    test_frames: np.ndarray,
    test_labels: np.ndarray,
    judgement: dict,
) -> dict:
    """Every figure of the module docstring for one regime (plus raw distances for plots)."""
    out: dict = {}
    # Class fidelity.
    predicted = predict(judge, to_model_input(pool.frames)).argmax(1).numpy()
    correct = predicted == pool.labels
    out["fidelity"] = {
        "all": float(correct.mean()) if len(correct) else float("nan"),
        "per_class": {
            c: float(correct[pool.labels == i].mean())
            for i, c in enumerate(classes)
            if (pool.labels == i).any()
        },
    }
    test_pred = predict(judge, to_model_input(test_frames)).argmax(1).numpy()
    out["judge_test_accuracy"] = float((test_pred == test_labels).mean())
    filters = judgement["filters"]
    out["fidelity_kept"] = {}
    for name, f in filters.items():
        kept = np.array([v["keep"] for v in f["verdicts"]])
        out["fidelity_kept"][name] = float(correct[kept].mean()) if kept.any() else float("nan")
    # VAE-Seq, synthetic vs real, per class.
    synth_seq = np.array([v["vae_seq"] for v in next(iter(filters.values()))["verdicts"]])
    real_seq = {r["id"]: r["vae_seq"] for r in judgement["real"]}
    real_seq = np.array([real_seq[f] for f in train_files])
    out["vae_seq"] = {
        c: {
            "synthetic": _summary(synth_seq[pool.labels == i]),
            "real": _summary(real_seq[train_labels == i]),
            "synthetic_mean": float(synth_seq[pool.labels == i].mean()),
            "real_mean": float(real_seq[train_labels == i].mean()),
        }
        for i, c in enumerate(classes)
        if (pool.labels == i).any() and (train_labels == i).any()
    }
    out["raw_vae_seq"] = {
        "synthetic": synth_seq.tolist(),
        "synthetic_labels": pool.labels.tolist(),
        "real": real_seq.tolist(),
        "real_labels": train_labels.tolist(),
    }
    # Frechet distance on the judge's clip features.
    f_pool = clip_features(judge, pool.frames)
    f_train = clip_features(judge, train_frames)
    f_test = clip_features(judge, test_frames)
    out["frechet"] = {
        "synthetic_vs_test": frechet_distance(f_pool, f_test),
        "real_train_vs_test": frechet_distance(f_train, f_test),
    }
    for name, f in filters.items():
        kept = np.array([v["keep"] for v in f["verdicts"]])
        if kept.sum() >= 2:
            out["frechet"][f"kept[{name}]_vs_test"] = frechet_distance(f_pool[kept], f_test)
    # Memorisation.
    s_train = _signatures(train_frames)
    pixel_synth, index = nearest(_signatures(pool.frames), s_train)
    pixel_test, _ = nearest(_signatures(test_frames), s_train)
    feat_synth = _feature_nearest(f_pool, f_train)
    feat_test = _feature_nearest(f_test, f_train)
    pixel_floor, feat_floor = float(pixel_test.min()), float(feat_test.min())
    flagged = [
        {
            "id": pool.ids[i],
            "nearest": train_files[index[i]],
            "pixel": float(pixel_synth[i]),
            "feature": float(feat_synth[i]),
            "is_source": train_files[index[i]] == pool.sources[i],
        }
        for i in range(len(pool.ids))
        if pixel_synth[i] < pixel_floor or feat_synth[i] < feat_floor
    ]
    memo = filters.get("real-band+memorisation")
    out["memorisation"] = {
        "pixel": {"synthetic": _summary(pixel_synth), "real_test": _summary(pixel_test)},
        "feature": {"synthetic": _summary(feat_synth), "real_test": _summary(feat_test)},
        "nearest_is_source": float(
            np.mean([train_files[j] == s for j, s in zip(index, pool.sources, strict=True)])
        ),
        "flagged_pixel": int((pixel_synth < pixel_floor).sum()),
        "flagged_feature": int((feat_synth < feat_floor).sum()),
        "flagged": flagged,
        "filter_threshold": memo["threshold"] if memo else None,
        "filter_rejected": sum(v["rejected_by"] == "memorisation" for v in memo["verdicts"])
        if memo
        else None,
    }
    out["raw_distances"] = {
        "pixel_synthetic": pixel_synth.tolist(),
        "pixel_test": pixel_test.tolist(),
        "feature_synthetic": feat_synth.tolist(),
        "feature_test": feat_test.tolist(),
    }
    return out


def acceptance(filters: dict, labels: np.ndarray, classes: list[str]) -> dict:
    """Per filter configuration: kept and rejected-by-level counts, overall and per class."""
    table = {}
    for name, f in filters.items():
        rows = {"all": {}, **{c: {} for c in classes}}
        for v, label in zip(f["verdicts"], labels, strict=True):
            key = "kept" if v["keep"] else v["rejected_by"]
            for group in ("all", classes[int(label)]):
                rows[group][key] = rows[group].get(key, 0) + 1
        table[name] = {"describe": f.get("describe", ""), "counts": rows}
    return table
