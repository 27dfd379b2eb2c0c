"""The augmentation report: real clips drawn as the model sees them, on the synthetic clips'
scale, and a header with the generator's card (escaped; figures only when the card has them)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clients.augment import report
from clients.augment.job import run_job
from clients.augment.manifest import load_pool, pool_path, save_pool
from clients.augment.output import to_uint8
from clients.augment.preflight import Generator, _card_figures, plan_generator
from clients.augment.report import (
    contact_sheet,
    generator_facts,
    generator_header,
    model_view,
    summary_lines,
)
from genaug.v1 import sampler_pb2 as pb
from services.data import layout
from services.models.training.data import to_unit
from tests.unit.augment_support import NAME, FakeFilter, FakePool, FakeSampler, options

CARD = Generator(
    "echo-ldm",
    ("A", "B", "C"),
    version="3",
    modality="us",
    num_frames=8,
    height=16,
    width=16,
    dataset_name="EchoTrain",
    dataset_fingerprint="0123456789abcdef" * 4,
    figures={"class_fidelity": 0.96875, "vae_psnr_db": 31.23456, "test_clips": 32},
)


def _dim_dataset(root, low=20, high=60):
    """The tiny dataset's layout with low-contrast clips: stored intensities in [low, high]."""
    folder = layout.dataset_dir(root, NAME)
    rng = np.random.default_rng(1)
    for split, prefix in (("train", "tr"), ("test", "te")):
        records = []
        for cls in ("A", "B", "C"):
            name = layout.clip_file_name(f"{prefix}-{cls.lower()}0", 0)
            frames = rng.integers(low, high + 1, (8, 16, 16), np.uint8)
            layout.write_clip(folder / name, frames)
            records.append({"file_name": name, "cls": cls, "text": f"{cls} clip"})
        layout.write_metadata(layout.metadata_path(root, NAME, split), records)
    return root


def _strip(sheet: np.ndarray, row: int, height: int = 16, frames: int = 8) -> np.ndarray:
    """Pixels of the clip in contact-sheet row `row` (each row: 190 px label, the frames)."""
    top = row * (height + 4)
    return sheet[top : top + height, 190 : 190 + frames * height]


def test_model_view_is_the_training_input_mapping_then_the_display_mapping():
    stored = np.random.default_rng(0).integers(0, 256, (4, 8, 8), np.uint8)
    np.testing.assert_array_equal(model_view(stored), to_uint8(to_unit(stored).numpy()))
    # The model's view of a stored uint8 clip is the clip: drawn, it is neither stretched nor
    # saturated (a dim clip stays dim).
    np.testing.assert_array_equal(model_view(stored), stored)


def test_the_real_strip_goes_through_the_training_input_mapping(tmp_path, monkeypatch):
    """Whatever the training input mapping is, the sheet draws real clips through it (the old
    sheet drew the decoded pixels as they were)."""
    root = _dim_dataset(tmp_path / "data")
    out = tmp_path / "out"
    result = run_job(options(root, out, per_class=1), FakePool(FakeSampler()), FakeFilter())
    # A stand-in mapping that halves contrast around mid-grey: the sheet must follow it.
    seen = []

    def halved(frames):
        seen.append(np.asarray(frames).dtype)
        return to_unit(frames) * 0.5

    monkeypatch.setattr(report, "to_unit", halved)
    sheet = np.asarray(Image.open(contact_sheet(result, tmp_path / "sheet.png")))
    assert seen and all(dtype == np.uint8 for dtype in seen)  # the stored clip, decoded
    folder = layout.dataset_dir(root, NAME)
    first = next(w for w in result.items if w.cls == "A" and w.id in result.verdicts)
    stored = layout.read_clip(first.source_clip, folder)
    expected = np.concatenate(list(to_uint8(halved(stored).numpy())), 1)
    np.testing.assert_array_equal(_strip(sheet, 0), expected)


def test_real_and_synthetic_share_one_scale_and_a_dim_clip_is_not_saturated(tmp_path):
    root = _dim_dataset(tmp_path / "data", 20, 60)
    out = tmp_path / "out"
    result = run_job(options(root, out, per_class=1), FakePool(FakeSampler()), FakeFilter())
    folder = layout.dataset_dir(root, NAME)
    # Replace the first synthetic clip of class A with its reference as the model saw it
    # (to_unit, in [-1, 1]): the sheet must draw both rows identically.
    items = sorted(
        (w for w in result.items if w.cls == "A" and w.id in result.verdicts),
        key=lambda w: not result.verdicts[w.id]["keep"],
    )
    synthetic = items[0]
    stored = layout.read_clip(synthetic.source_clip, folder)
    path = pool_path(out, synthetic.id)
    latents, _ = load_pool(path)
    save_pool(path, latents, to_unit(stored).numpy()[:, None])
    assert np.allclose(load_pool(path)[1][:, 0], to_unit(stored).numpy())

    sheet = np.asarray(Image.open(contact_sheet(result, tmp_path / "sheet.png")))
    real, fake = _strip(sheet, 0), _strip(sheet, 1)
    np.testing.assert_array_equal(real, fake)
    # Drawn as stored (20..60, within the AVI round trip's 1 grey level): nothing white,
    # nothing stretched to 0..255.
    assert real.min() >= 19 and real.max() <= 61
    assert abs(float(real.mean()) - float(stored.mean())) < 0.5
    assert not (real == 255).any()


def test_the_header_lists_the_card_and_its_key_figures():
    assert generator_facts(CARD) == [
        ("generator", "echo-ldm"),
        ("version", "3"),
        ("trained on", "EchoTrain (sha256 0123456789ab)"),
        ("modality", "us"),
        ("frames x height x width", "8 x 16 x 16"),
        ("classes", "A, B, C"),
        ("class fidelity", "0.9688"),
        ("VAE PSNR (dB)", "31.23"),
    ]
    block = generator_header(CARD)
    assert block.startswith('<table id="generator">')
    assert "<tr><th>VAE PSNR (dB)</th><td>31.23</td></tr>" in block
    assert "test_clips" not in block and "none on the card" not in block


def test_the_header_says_when_the_card_has_no_figures_or_fields():
    bare = Generator("g", ("A",))
    facts = dict(generator_facts(bare))
    assert facts["version"] == "unknown" and facts["trained on"] == "unknown"
    assert facts["frames x height x width"] == "unknown x unknown x unknown"
    assert "class fidelity" not in facts and "VAE PSNR (dB)" not in facts
    assert "<th>figures</th><td>none on the card</td>" in generator_header(bare)
    only_psnr = Generator("g", ("A",), figures={"vae_psnr_db": "n/a"})
    assert dict(generator_facts(only_psnr))["VAE PSNR (dB)"] == "n/a"
    assert "none on the card" not in generator_header(only_psnr)
    assert "not listed by the samplers" in generator_header(None)
    assert report.generator_line(None) is None


def test_the_header_escapes_every_value():
    hostile = Generator(
        "<b>g</b>",
        ("<script>x</script>", "A&B"),
        version='1" onclick="y',
        modality="<us>",
        dataset_name="<img src=x>",
        figures={"class_fidelity": "<i>0.9</i>"},
    )
    block = generator_header(hostile)
    for raw in ("<b>", "<script>", "<img", "<i>", "<us>", '1" onclick'):
        assert raw not in block
    assert "&lt;script&gt;x&lt;/script&gt;, A&amp;B" in block
    assert "1&quot; onclick=&quot;y" in block


@pytest.mark.parametrize(
    ("card_json", "figures"),
    [
        ('{"figures": {"class_fidelity": 1.0}}', {"class_fidelity": 1.0}),
        ("", {}),
        ("not json", {}),
        ("[1, 2]", {}),
        ('{"figures": [1]}', {}),
    ],
)
def test_figures_come_from_the_listed_card_json(card_json, figures):
    assert _card_figures(card_json) == figures
    info = pb.GeneratorInfo(
        name="g", version="2", class_names=["A"], dataset_fingerprint="ab", card_json=card_json
    )
    generator = Generator.from_info(info)
    assert generator.figures == figures and generator.dataset_fingerprint == "ab"


def test_the_report_starts_with_out_of_domain_then_the_card(tmp_path):
    root = _dim_dataset(tmp_path / "data")
    items = layout.load_dataset(root, NAME, "train").items
    card = Generator(
        "echo<1>",
        ("C", "X", "A", "B"),
        version="2",
        modality="us",
        num_frames=8,
        height=64,
        width=64,
        dataset_name="Echo",
        figures={"class_fidelity": 0.5},
    )
    plan = plan_generator(NAME, items, card, allow_out_of_domain=True)
    out = tmp_path / "out"
    result = run_job(
        options(root, out, per_class=1, report=True), FakePool(FakeSampler()), FakeFilter(), plan
    )
    assert result.generator_card == card
    lines = summary_lines(result)
    assert lines[0] == plan.out_of_domain[0]
    assert lines[1] == (
        "generator echo<1>; version 2; trained on Echo; modality us; frames x height x width "
        "8 x 64 x 64; classes C, X, A, B; class fidelity 0.5"
    )
    assert lines[2].startswith(f"augmented {NAME} with generator echo<1>:")
    page = result.report_path.read_text()
    warning, header = page.index("OUT OF DOMAIN"), page.index('<table id="generator">')
    assert page.index("<h1>") < warning < header < page.index("<h2>")
    assert "echo&lt;1&gt;" in page and "echo<1>" not in page
    assert "<th>class fidelity</th><td>0.5</td>" in page
    assert "<th>VAE PSNR (dB)</th>" not in page


def test_without_a_listed_generator_the_summary_is_unchanged(tmp_path):
    root = _dim_dataset(tmp_path / "data")
    out = tmp_path / "out"
    result = run_job(
        options(root, out, per_class=1, report=True), FakePool(FakeSampler()), FakeFilter()
    )
    assert result.generator_card is None
    assert summary_lines(result)[0].startswith(f"augmented {NAME}: shard 0/1")
    assert "not listed by the samplers" in result.report_path.read_text()
