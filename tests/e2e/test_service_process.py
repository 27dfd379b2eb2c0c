"""A service as a real process: SERVING after load, graceful drain on SIGTERM, exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from clients import VaeCodecClient, open_channel, wait_until_serving
from clients.rpc.channel import ChannelSettings
from clients.rpc.health import check
from tests.support import SMALL_LATENT_CHANNELS, free_port

ROOT = Path(__file__).resolve().parents[2]


def test_sigterm_drains_completes_in_flight_work_and_exits_zero(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.vae_codec",
            "--port",
            str(port),
            "--metrics-port",
            "-1",
            "--model-dir",
            str(tmp_path),
            "--drain-seconds",
            "3",
            "--grace-seconds",
            "60",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with open_channel(f"127.0.0.1:{port}", ChannelSettings(retry_attempts=1)) as channel:
            wait_until_serving(channel, "vae_codec", timeout=120)
            client = VaeCodecClient(channel)
            result: dict = {}
            # Long enough to be in flight when SIGTERM arrives (tens of micro-batches).
            frames = np.zeros((240, 1, 64, 64), np.float32)

            def work():
                try:
                    result["latents"] = client.encode(frames, timeout=120)
                except Exception as error:  # noqa: BLE001 - reported by the assertion below
                    result["error"] = error

            worker = threading.Thread(target=work)
            worker.start()
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            statuses = set()
            # Within the 3 s drain; wide enough for a signal handler delayed by a busy machine.
            deadline = time.monotonic() + 2.7
            while time.monotonic() < deadline:
                statuses.add(check(channel, "vae_codec", timeout=0.5))
                time.sleep(0.05)
            assert "NOT_SERVING" in statuses
            worker.join(timeout=120)
        assert "error" not in result, result.get("error")
        assert result["latents"].shape == (240, SMALL_LATENT_CHANNELS, 8, 8)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        output = process.communicate()[0]
    assert "received SIGTERM" in output and "vae_codec stopped" in output
