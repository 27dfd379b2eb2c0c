"""Every Generate call is announced to the sampler's engine as it starts, over real gRPC.

The hook (`CallStartHooks`) runs when a call's headers arrive, while its 4 MiB of conditions
may still be on their way; the engine's first step on an idle engine then waits for the call
(`--gather-ms`; the waiting itself is tested on the engine, `tests/unit/test_sampler_engine`).
"""

from __future__ import annotations

from clients.rpc.channel import ChannelSettings, open_channel
from clients.rpc.sampler import SamplerClient
from services.common.config import ServerConfig
from services.sampler.__main__ import build_server
from services.sampler.backend import SamplerBackend
from tests.service.conftest import running
from tests.service.test_sampler import _conditions


def test_each_generate_call_is_announced_before_it_is_submitted(tmp_path):
    model_dir = tmp_path / "models"  # no weights: the seeded small models
    model_dir.mkdir()
    config = ServerConfig(service="sampler", port=0, metrics_port=None, model_dir=model_dir)
    server = build_server(config, SamplerBackend(model_dir), gather_s=5.0)
    with running(server), open_channel(f"127.0.0.1:{server.port}", ChannelSettings()) as channel:
        engine = server.runtime.engine
        seen = []
        announce, submit = engine.announce, engine.submit
        engine.announce = lambda: seen.append("announced") or announce()
        engine.submit = lambda *a, **kw: seen.append("submitted") or submit(*a, **kw)
        client = SamplerClient(channel)
        for n in range(2):
            clip = client.generate(1, _conditions(), seed=n, steps=2, decode=False, timeout=60)
            assert clip.latents.shape[0] == 8
        client.list_models()  # not a Generate: not announced
        assert seen == ["announced", "submitted"] * 2
        assert not engine._announced  # each submission took its announcement
