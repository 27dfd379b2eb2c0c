"""`genaug conditions` on the bundled dataset: in-process and over gRPC, resumable."""

from __future__ import annotations

import numpy as np
import pytest

from clients.cli import main as genaug
from clients.local_cluster import LocalCluster
from clients.rpc.channel import open_channel
from clients.rpc.conditions import GrpcConditions
from clients.rpc.motion import MotionExtractorClient
from services.common.config import ServerConfig
from services.data import layout, phantoms
from services.data.conditions import condition_paths, load_motion, precompute
from services.data.layout import read_clip
from services.models.conditions import InProcessConditions
from services.motion_extractor.__main__ import build_server
from tests.service.conftest import running


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return phantoms.ensure_bundled_dataset(tmp_path_factory.mktemp("data"))


def _motion_files(root):
    return sorted((root / "Phantom_motion_field").glob("*.npy"))


def test_in_process_motion_is_resumable(dataset):
    backend = InProcessConditions("codec")
    counts = precompute(dataset, "Phantom", ["train"], ["motion"], backend, limit=3, progress=False)
    assert counts == {"computed": 3, "skipped": 0}
    files = _motion_files(dataset)
    assert len(files) == 3
    field = np.load(files[0], allow_pickle=False)
    assert field.shape == (7, 2, 64, 64) and field.dtype == np.float32
    stem = files[0].stem
    with np.load(
        dataset / "Phantom_motion_field_trajectory" / f"{stem}.npz", allow_pickle=False
    ) as archive:
        assert archive["trajectories"].shape == (8 * 8 * 8, 16, 3)
        assert archive["trajectory_mask"].dtype == np.bool_
    files[1].unlink()
    again = precompute(dataset, "Phantom", ["train"], ["motion"], backend, limit=3, progress=False)
    assert again == {"computed": 1, "skipped": 2}
    assert not list(dataset.glob("Phantom_motion_field/.*")), "temporary files left behind"


def test_grpc_backend_gives_the_same_files(dataset, tmp_path):
    config = ServerConfig(service="motion_extractor", port=0, metrics_port=None)
    with running(build_server(config)) as server:
        with open_channel(f"127.0.0.1:{server.port}") as channel:
            backend = GrpcConditions(motion=MotionExtractorClient(channel), method="codec")
            item = next(iter(layout.load_dataset(dataset, "Phantom", "train")))
            remote = backend.motion(read_clip(item.path))
    local = InProcessConditions("codec").motion(read_clip(item.path))
    for a, b in zip(remote, local, strict=True):
        np.testing.assert_array_equal(a, b)


def test_cli_over_grpc_writes_the_in_process_files(dataset, capsys):
    config = ServerConfig(service="motion_extractor", port=0, metrics_port=None)
    with running(build_server(config)) as server:
        flags = ["--dataset-root", str(dataset), "--name", "Phantom", "--splits", "train"]
        flags += ["--what", "motion", "--limit", "1", "--overwrite"]
        assert genaug(["conditions", *flags, "--motion-target", f"127.0.0.1:{server.port}"]) == 0
    assert "Phantom: 1 clips computed, 0 already done" in capsys.readouterr().out
    item = next(iter(layout.load_dataset(dataset, "Phantom", "train")))
    written = load_motion(condition_paths(dataset, "Phantom", item.file_name))
    local = InProcessConditions("codec").motion(read_clip(item.path))
    for a, b in zip(written, local, strict=True):
        np.testing.assert_array_equal(a, b)


def test_prior_of_one_clip_in_process(dataset):
    backend = InProcessConditions("codec")
    counts = precompute(dataset, "Phantom", ["test"], ["prior"], backend, limit=1, progress=False)
    assert counts["computed"] == 1
    (prior_file,) = (dataset / "Phantom_data_emb").glob("*.npy")
    prior = np.load(prior_file, allow_pickle=False)
    assert prior.shape == (256, 64, 64) and np.isfinite(prior).all()


def test_local_cluster_reports_a_failing_service(tmp_path):
    cluster = LocalCluster(["vae_codec"], log_dir=tmp_path, extra_args={"vae_codec": ["--bogus"]})
    with pytest.raises(RuntimeError, match="exited with code 2"):
        cluster.start(timeout=60)
    cluster.stop()
