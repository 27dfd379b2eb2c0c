"""Fixtures for the service tier: real servers on loopback in this process."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from clients.rpc.channel import ChannelSettings, open_channel
from services.common.config import ServerConfig
from services.vae_codec.__main__ import build_server
from tests.support import echo_service


@contextlib.contextmanager
def running(server):
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=0)


def codec_config(tmp_path: Path, **overrides) -> ServerConfig:
    """A codec on a free port with no trained weights (seeded small VAE) and metrics on."""
    (tmp_path / "models").mkdir(parents=True, exist_ok=True)
    values = dict(service="vae_codec", port=0, metrics_port=0, model_dir=tmp_path / "models")
    values.update(overrides)
    return ServerConfig(**values)


def codec_with_echo(config: ServerConfig):
    server = build_server(config)
    server.typed_services.append(echo_service())
    return server


@pytest.fixture(scope="module")
def codec_server(tmp_path_factory):
    config = codec_config(tmp_path_factory.mktemp("codec"))
    with running(codec_with_echo(config)) as server:
        yield server


@pytest.fixture
def channel(codec_server):
    with open_channel(f"127.0.0.1:{codec_server.port}", ChannelSettings(retry_attempts=1)) as ch:
        yield ch
