"""The five services with two sampler replicas, shared by the end-to-end modules that need
them (started once for the package, stopped after its last test)."""

from __future__ import annotations

import pytest

from tests.e2e.cluster import two_samplers


@pytest.fixture(scope="package")
def _two_sampler_processes(tmp_path_factory):
    with two_samplers(tmp_path_factory.mktemp("logs")) as pair:
        yield pair


@pytest.fixture(scope="module")
def two_sampler_cluster(_two_sampler_processes):
    """(the five services, sampler replica B), every process running when a module starts:
    one that an earlier module killed is started again on its port."""
    for cluster in _two_sampler_processes:
        for name, service in cluster.services.items():
            if service.process is None or service.process.poll() is not None:
                cluster.restart(name)
    return _two_sampler_processes
