"""The job's results: a per-class summary, and an HTML report with a contact sheet.

`<out>/report/index.html` (`<out>/report/shard-<i>-of-<n>/` for sharded jobs) starts with what
`--allow-out-of-domain` let through, then the generator's card as the samplers' ListModels gave
it (name, version, the dataset it was trained on, modality, clip shape, classes, and its
class-fidelity and VAE PSNR figures when the card has them). It shows, per class, real reference
clips next to synthetic ones (kept, and rejected with their reason), the filter's statistics
(the VAE-Seq band, or the per-class bands with `--sequential-band class`, and cross-entropy) and
throughput. Real clips are drawn as the model sees them: the stored clip through the training
input mapping (`to_unit`, to [-1, 1]), then the display mapping of the synthetic clips
(`to_uint8`), so both are on one intensity scale. Only the dataset's pseudonymous file names
appear in it.
"""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from clients.augment.manifest import load_pool, pool_path
from clients.augment.output import to_uint8
from clients.augment.spans import summary_line as timings_line
from clients.augment.spans import timings_path
from services.data import layout
from services.models.training.data import to_unit

SHEET_SYNTHETIC_PER_CLASS = 3
# The card's figures shown in the header, in order, with their labels.
HEADER_FIGURES = (("class_fidelity", "class fidelity"), ("vae_psnr_db", "VAE PSNR (dB)"))


def class_summary(result) -> dict[str, dict]:
    """Per class: requested (this shard), generated, kept, rejected by level."""
    rows: dict[str, dict] = {}
    for w in result.items:
        row = rows.setdefault(
            w.cls, {"requested": 0, "generated": 0, "kept": 0, "rejected": Counter()}
        )
        row["requested"] += 1
        verdict = result.verdicts.get(w.id)
        if verdict is None:
            continue
        row["generated"] += 1
        if verdict["keep"]:
            row["kept"] += 1
        else:
            row["rejected"][verdict.get("rejected_by") or "unknown"] += 1
    return dict(sorted(rows.items()))


def model_view(stored: np.ndarray) -> np.ndarray:
    """A stored clip (T, H, W) as the model sees it, for display: the training input mapping
    (`to_unit`, to [-1, 1]) then the synthetic clips' display mapping (`to_uint8`)."""
    return to_uint8(to_unit(stored).numpy())


def generator_facts(card) -> list[tuple[str, str]]:
    """(label, value) rows of the report's header from the generator's card (`Generator`);
    unknown fields read "unknown", figures the card lacks are left out."""
    if card is None:
        return []

    def known(value) -> str:
        return str(value) if value not in ("", 0, None) else "unknown"

    dataset = known(card.dataset_name)
    if card.dataset_fingerprint:
        dataset += f" (sha256 {card.dataset_fingerprint[:12]})"
    shape = (card.num_frames, card.height, card.width)
    facts = [
        ("generator", card.name),
        ("version", known(card.version)),
        ("trained on", dataset),
        ("modality", known(card.modality)),
        ("frames x height x width", " x ".join(known(v) for v in shape)),
        ("classes", ", ".join(card.class_names) or "none"),
    ]
    figures = card.figures or {}
    facts += [(label, _figure(figures[key])) for key, label in HEADER_FIGURES if key in figures]
    return facts


def _figure(value) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.4g}"


def generator_line(card) -> str | None:
    """The summary's one line on the generator's card (None without one)."""
    facts = generator_facts(card)
    if not facts:
        return None
    return "generator " + "; ".join(
        value if label == "generator" else f"{label} {value}" for label, value in facts
    )


def summary_lines(result) -> list[str]:
    o = result.options
    rows = class_summary(result)
    lines = [*getattr(result, "out_of_domain", [])]
    card_line = generator_line(getattr(result, "generator_card", None))
    if card_line:
        lines.append(card_line)
    generator = getattr(result, "generator", "")
    lines += [
        f"augmented {result.name}"
        + (f" with generator {generator}" if generator else "")
        + f": shard {o.shard_index}/{o.shard_count}, "
        f"{o.steps} steps, guidance {o.guidance:g}, {o.solver}, "
        f"conditions {' '.join(o.conditions)}",
        f"  {'class':<12} {'requested':>9} {'generated':>9} {'kept':>5}  rejected",
    ]
    for cls, row in rows.items():
        rejected = ", ".join(f"{k} {v}" for k, v in sorted(row["rejected"].items())) or "-"
        lines.append(
            f"  {cls:<12} {row['requested']:>9} {row['generated']:>9} {row['kept']:>5}  {rejected}"
        )
    low, high = result.band
    class_bands = _class_bands(result)
    if class_bands:
        per_class = ", ".join(f"{name} {_band(b)}" for name, b in class_bands)
        lines.append(f"  VAE-Seq keep band per class: {per_class}")
        lines.append(f"  VAE-Seq pool-wide band [{_num(low)}, {_num(high)}] (reported only)")
    elif low is not None or high is not None:
        lines.append(f"  VAE-Seq keep band [{_num(low)}, {_num(high)}]")
    if result.generated_now:
        rate = result.generated_now / max(result.generation_seconds, 1e-9)
        lines.append(
            f"  generated {result.generated_now} clips in {result.generation_seconds:.1f}s "
            f"({rate:.2f} clips/s); wall {result.wall_seconds:.1f}s"
        )
    else:
        lines.append(f"  nothing left to generate; wall {result.wall_seconds:.1f}s")
    if result.replicas:
        by = ", ".join(f"{k} {v}" for k, v in sorted(result.replicas.items()))
        lines.append(f"  clips per sampler replica: {by}")
    timings = getattr(result, "timings", None)
    if timings:
        path = timings_path(o.out, o.shard_index, o.shard_count)
        lines.append(f"{timings_line(timings)} ({path})")
    return lines


def _num(value) -> str:
    return "-inf/+inf" if value is None else f"{value:.2f}"


def _class_bands(result) -> list[tuple[str, dict]]:
    """(class name, band) per class band of the filtered event, in label order; empty for the
    pool-wide scope and for states written before per-class bands existed."""
    names = result.class_names
    bands = sorted(result.class_bands, key=lambda b: b.get("label", 0))
    out = []
    for band in bands:
        label = int(band.get("label", 0))
        out.append((names[label] if 0 <= label < len(names) else f"class {label}", band))
    return out


def _band(band: dict) -> str:
    if not band.get("applied", True):
        return "not applied"
    return f"[{_num(band.get('low'))}, {_num(band.get('high'))}]"


def _label(image: Image.Image, text: str) -> Image.Image:
    canvas = Image.new("L", (image.width + 190, image.height), 255)
    canvas.paste(image, (190, 0))
    ImageDraw.Draw(canvas).text((4, max(0, image.height // 2 - 6)), text[:32], fill=0)
    return canvas


def contact_sheet(result, path: Path, frames_shown: int = 8) -> Path:
    """Rows per class: one real reference clip, then synthetic clips (kept first)."""
    folder = layout.dataset_dir(result.options.dataset_root, result.name)
    rows: list[Image.Image] = []
    by_class: dict[str, list] = {}
    for w in result.items:
        if w.id in result.verdicts:
            by_class.setdefault(w.cls, []).append(w)
    for cls, items in sorted(by_class.items()):
        real = model_view(layout.read_clip(items[0].source_clip, folder)[:frames_shown])
        rows.append(_label(Image.fromarray(np.concatenate(list(real), 1)), f"{cls} real"))
        kept = [w for w in items if result.verdicts[w.id]["keep"]]
        rejected = [w for w in items if not result.verdicts[w.id]["keep"]]
        shown = kept[:SHEET_SYNTHETIC_PER_CLASS] + rejected[:1]
        for w in shown:
            clip = to_uint8(load_pool(pool_path(result.options.out, w.id))[1])[:frames_shown]
            verdict = result.verdicts[w.id]
            tag = "kept" if verdict["keep"] else f"rejected {verdict.get('rejected_by')}"
            rows.append(
                _label(Image.fromarray(np.concatenate(list(clip), 1)), f"{cls} seed {w.seed} {tag}")
            )
    if not rows:
        rows = [Image.new("L", (300, 40), 255)]
    width = max(r.width for r in rows)
    sheet = Image.new("L", (width, sum(r.height + 4 for r in rows)), 255)
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + 4
    layout.atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))
    return path


def statistics_plot(result, path: Path) -> Path | None:
    """Histograms of VAE-Seq (with the keep band) and cross-entropy, kept vs rejected."""
    scored = [v for v in result.verdicts.values() if v.get("vae_seq") is not None]
    if not scored:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, title in ((axes[0], "vae_seq", "VAE-Seq"), (axes[1], "cross_entropy", "CE")):
        kept = [v[key] for v in scored if v["keep"] and v.get(key) is not None]
        rejected = [v[key] for v in scored if not v["keep"] and v.get(key) is not None]
        ax.hist([kept, rejected], bins=20, stacked=True, label=["kept", "rejected"])
        ax.set_title(title)
        ax.legend()
    class_bands = _class_bands(result)
    for i, bound in enumerate(result.band):
        if bound is not None:
            label = None if i else ("pool band" if class_bands else "band")
            axes[0].axvline(bound, color="k", linestyle="--", label=label)
    for n, (name, band) in enumerate(b for b in class_bands if b[1].get("applied", True)):
        for i, bound in enumerate((band.get("low"), band.get("high"))):
            if bound is not None:
                label = None if i else f"{name} band"
                axes[0].axvline(bound, color=f"C{n + 2}", linestyle=":", label=label)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    layout.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return path


def write_report(result) -> Path:
    o = result.options
    folder = Path(o.out) / "report"
    if o.shard_count > 1:
        folder = folder / f"shard-{o.shard_index}-of-{o.shard_count}"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.tmp-*"):  # left by a killed run of this shard
        stale.unlink(missing_ok=True)
    contact_sheet(result, folder / "contact_sheet.png")
    stats = statistics_plot(result, folder / "filter_statistics.png")
    e = html.escape
    rows = class_summary(result)
    table = "".join(
        f"<tr><td>{e(c)}</td><td>{r['requested']}</td><td>{r['generated']}</td>"
        f"<td>{r['kept']}</td><td>{e(', '.join(f'{k} {v}' for k, v in r['rejected'].items()))}"
        "</td></tr>"
        for c, r in rows.items()
    )
    rejected = "".join(
        f"<tr><td>{e(w.id)}</td><td>{e(w.source_clip)}</td>"
        f"<td>{e('; '.join(result.verdicts[w.id]['reasons']))}</td></tr>"
        for w in result.items
        if w.id in result.verdicts and not result.verdicts[w.id]["keep"]
    )
    text = "<br>".join(e(line) for line in summary_lines(result))
    class_bands = _class_bands(result)
    if class_bands:
        band_rows = "".join(
            f"<tr><td>{e(name)}</td><td>{int(b.get('label', 0))}</td><td>{_num(b.get('low'))}</td>"
            f"<td>{_num(b.get('high'))}</td><td>{'yes' if b.get('applied', True) else 'no'}</td>"
            f"<td>{e(b.get('note') or '')}</td></tr>"
            for name, b in class_bands
        )
        bands = (
            f"<p>VAE-Seq keep band per class (each clip judged against its class's band); "
            f"pool-wide band, reported only: [{_num(result.band[0])}, {_num(result.band[1])}]</p>"
            "<table><tr><th>class</th><th>label</th><th>low</th><th>high</th><th>applied</th>"
            f"<th>note</th></tr>{band_rows}</table>"
        )
    else:
        bands = f"<p>VAE-Seq keep band: [{_num(result.band[0])}, {_num(result.band[1])}]</p>"
    warnings = "".join(
        f'<p style="color:#a00"><strong>{e(note)}</strong></p>'
        for note in getattr(result, "out_of_domain", [])
    )
    header = generator_header(getattr(result, "generator_card", None))
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>Ctrl-GenAug augmentation: {e(result.name)}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{border:1px solid #ccc;padding:3px 8px}}
table{{border-collapse:collapse}}</style></head><body>
<h1>Augmented {e(result.name)}</h1>
{warnings}
{header}
<p style="font-family:monospace">{text}</p>
<h2>Per class</h2><table><tr><th>class</th><th>requested</th><th>generated</th><th>kept</th>
<th>rejected by level</th></tr>{table}</table>
<h2>Real vs synthetic</h2>
<p>Real clips are drawn as the model sees them (its training input mapping), on the synthetic
clips' intensity scale.</p>
<img src="contact_sheet.png" alt="contact sheet">
<h2>Filter statistics</h2>
{bands}
{'<img src="filter_statistics.png" alt="filter statistics">' if stats else "<p>not filtered</p>"}
<h2>Rejected clips</h2><table><tr><th>clip</th><th>source clip</th><th>reasons</th></tr>
{rejected or '<tr><td colspan="3">none</td></tr>'}</table>
</body></html>
"""
    return layout.atomic_write_bytes(folder / "index.html", page.encode("utf-8"))


def generator_header(card) -> str:
    """The report's header block on the generator's card (HTML, every value escaped)."""
    facts = generator_facts(card)
    if not facts:
        return '<p id="generator">generator: not listed by the samplers (no ListModels)</p>'
    e = html.escape
    rows = "".join(f"<tr><th>{e(label)}</th><td>{e(value)}</td></tr>" for label, value in facts)
    figures = card.figures or {}
    if not any(key in figures for key, _ in HEADER_FIGURES):
        rows += "<tr><th>figures</th><td>none on the card</td></tr>"
    return f'<table id="generator">{rows}</table>'
