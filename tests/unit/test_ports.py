"""Default ports are defined once (genaug.ports); the README's table and the services agree."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from genaug.ports import DEFAULT_PORTS, default_target

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_ports_table_matches_genaug_ports():
    rows = re.findall(r"^\| `(\w+)` \| (\d+) \| (\d+) \|", README.read_text(), re.M)
    assert {name: (int(g), int(m)) for name, g, m in rows} == {
        name: tuple(ports) for name, ports in DEFAULT_PORTS.items()
    }


@pytest.mark.parametrize("service", sorted(DEFAULT_PORTS))
def test_each_service_defaults_to_its_ports(service, monkeypatch, capsys):
    for var in ("GENAUG_PORT", "GENAUG_METRICS_PORT"):
        monkeypatch.delenv(var, raising=False)
    main = importlib.import_module(f"services.{service}.__main__").main
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    grpc_port, metrics_port = DEFAULT_PORTS[service]
    assert f"free one (default {grpc_port})" in text
    assert f"disables (default {metrics_port})" in text


def test_default_target():
    assert default_target("sampler") == "127.0.0.1:50053"
    assert default_target("filter", "filter.genaug.svc") == "filter.genaug.svc:50054"
