"""The import layering holds for the whole tree, and the checker catches what it should."""

from __future__ import annotations

from pathlib import Path

from tests.layering import check

ROOT = Path(__file__).resolve().parents[2]


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in ("protos/genaug", "services", "clients", "benchmarks", "tests"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    return tmp_path


def test_the_project_follows_its_layering():
    violations, circles = check(ROOT)
    assert [str(v) for v in violations] == []
    assert circles == []


def test_a_model_importing_the_client_library_is_refused(tmp_path):
    root = _tree(
        tmp_path,
        {
            "clients/__init__.py": "",
            "clients/rpc/__init__.py": "",
            "clients/rpc/sampler.py": "",
            "services/__init__.py": "",
            "services/models/__init__.py": "",
            "services/models/vae.py": "def f():\n    from clients.rpc import sampler\n",
        },
    )
    violations, _ = check(root)
    assert [(v.module, v.imported, v.line) for v in violations] == [
        ("services.models.vae", "clients.rpc", 2),
        ("services.models.vae", "clients.rpc.sampler", 2),
    ]
    assert "services.models may not import clients.rpc" in violations[0].why


def test_one_service_importing_another_is_refused(tmp_path):
    root = _tree(
        tmp_path,
        {
            "services/__init__.py": "",
            "services/vae_codec/__init__.py": "",
            "services/vae_codec/model.py": "",
            "services/filter/__init__.py": "",
            "services/filter/scorer.py": "from services.vae_codec.model import X\n",
        },
    )
    violations, _ = check(root)
    assert {v.why for v in violations} == {"a service imports another"}


def test_the_client_library_may_import_only_the_wire(tmp_path):
    root = _tree(
        tmp_path,
        {
            "protos/genaug/__init__.py": "",
            "protos/genaug/wire.py": "",
            "clients/__init__.py": "",
            "clients/augment.py": "",
            "clients/rpc/__init__.py": "from genaug import wire\n",
            "clients/rpc/job.py": "import clients.augment\n",
        },
    )
    violations, _ = check(root)
    assert [(v.module, v.imported) for v in violations] == [("clients.rpc.job", "clients.augment")]


def test_a_circle_is_reported_even_through_lazy_imports(tmp_path):
    root = _tree(
        tmp_path,
        {
            "services/__init__.py": "",
            "services/models/__init__.py": "",
            "services/models/a.py": "from services.models import b\n",
            "services/models/b.py": "def g():\n    from services.models.a import h\n",
        },
    )
    violations, circles = check(root)
    assert violations == []
    assert circles == [["services.models.a", "services.models.b"]]
