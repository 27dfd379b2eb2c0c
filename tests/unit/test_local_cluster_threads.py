"""Sampler replicas on one machine split its cores instead of spinning against each other."""

from __future__ import annotations

from clients.local_cluster import LocalCluster, replica_threads


def test_replicas_split_the_cores_unless_the_threads_are_set(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert replica_threads(1, cores=8) is None  # one replica keeps the default
    assert replica_threads(2, cores=8) == 4 and replica_threads(3, cores=2) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert replica_threads(2, cores=8) is None  # the caller's choice wins


def test_only_the_sampler_processes_get_the_split(monkeypatch, tmp_path):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cluster = LocalCluster(["sampler", "vae_codec"], None, tmp_path, sampler_replicas=2)
    envs = {name: s.env for name, s in cluster.services.items()}
    split = replica_threads(2)
    assert envs == {"sampler": {"OMP_NUM_THREADS": str(split)},
                    "sampler-2": {"OMP_NUM_THREADS": str(split)}, "vae_codec": {}}  # fmt: skip
    assert LocalCluster(["sampler"], None, tmp_path).services["sampler"].env == {}
