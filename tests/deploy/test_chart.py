"""The Helm chart: lint, render every CI value set, validate every object against Kubernetes
1.29's schemas (core objects) or the vendored CRD schemas (KEDA, prometheus-operator), and check
what the rendered objects promise (probes, drain, GPU scheduling, the Indexed Job)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from genaug.ports import DEFAULT_PORTS
from tests.deploy import chart
from tests.deploy.chart import (
    CHART,
    CRD_KINDS,
    FULLNAME,
    NAMESPACE,
    VALUE_SETS,
    by_kind,
    render,
    run_helm,
    value_set,
)

SCHEMAS = Path(__file__).parent / "schemas"
CRD_SCHEMAS = {
    "ScaledObject": "keda.sh_scaledobject_v1alpha1.json",
    "ServiceMonitor": "monitoring.coreos.com_servicemonitor_v1.json",
    "PrometheusRule": "monitoring.coreos.com_prometheusrule_v1.json",
}


def test_value_sets_are_the_documented_ones():
    names = {p.name.removesuffix("-values.yaml") for p in VALUE_SETS}
    assert names == {"defaults", "gpu-keda", "hpa", "scale-to-zero", "tls-token", "job", "triton"}


def test_lint_strict_with_every_value_set():
    for values in [None, *VALUE_SETS]:
        args = ["lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
        out = run_helm(*args)
        assert out.returncode == 0, f"{values}: {out.stdout}{out.stderr}"


@pytest.mark.parametrize("values", VALUE_SETS, ids=lambda p: p.stem)
def test_rendered_objects_validate_against_kubernetes_1_29(values):
    text = chart.render_text(values)
    out = subprocess.run(
        [chart.kubernetes_validate(), "--strict", "-k", "1.29.0", "-"],
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = out.stdout + out.stderr
    assert out.returncode == 0 and "ERROR" not in report, report
    # "Couldn't find schema" exits 0: allowed only for the CRDs checked below.
    missing = [line for line in report.splitlines() if "Couldn't find schema" in line]
    for line in missing:
        assert any(f"kind {kind} " in line for kind in CRD_KINDS), line
    crds = [d for d in render(values) if d["kind"] in CRD_KINDS]
    assert len(missing) == len(crds)
    for doc in crds:
        schema = json.loads((SCHEMAS / CRD_SCHEMAS[doc["kind"]]).read_text())
        jsonschema.validate(doc, schema)


def test_crd_schemas_reject_what_the_operators_would():
    docs = chart.everything_on()
    scaled = by_kind(docs, "ScaledObject")[0]
    schema = json.loads((SCHEMAS / CRD_SCHEMAS["ScaledObject"]).read_text())
    bad = json.loads(json.dumps(scaled))
    bad["spec"]["triggers"][0]["metadata"]["threshold"] = 4  # KEDA wants strings
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    rules = by_kind(docs, "PrometheusRule")[0]
    schema = json.loads((SCHEMAS / CRD_SCHEMAS["PrometheusRule"]).read_text())
    bad = json.loads(json.dumps(rules))
    bad["spec"]["groups"][0]["rules"][0]["fore"] = "5m"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def _objects(docs):
    return sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)


def test_objects_per_value_set(capsys):
    """Prints the inventory (the closing note lists it) and checks the switches."""
    kinds = {}
    for values in VALUE_SETS:
        docs = render(values)
        kinds[values.stem] = {d["kind"] for d in docs}
        with capsys.disabled():
            counts = {}
            for d in docs:
                counts[d["kind"]] = counts.get(d["kind"], 0) + 1
            print(f"\n{values.stem}: {len(docs)} objects {dict(sorted(counts.items()))}")
    assert {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"} <= kinds[
        "defaults-values"
    ]
    assert not kinds["defaults-values"] & (CRD_KINDS | {"Job", "HorizontalPodAutoscaler"})
    assert {"ScaledObject", "ServiceMonitor", "PrometheusRule", "ConfigMap"} <= kinds[
        "gpu-keda-values"
    ]
    assert "HorizontalPodAutoscaler" in kinds["hpa-values"]
    assert "ScaledObject" not in kinds["hpa-values"]
    assert {"Job", "PersistentVolumeClaim", "ScaledObject"} <= kinds["scale-to-zero-values"]
    assert "Secret" in kinds["tls-token-values"]
    assert "Job" in kinds["job-values"] and "PersistentVolumeClaim" not in kinds["job-values"]


def _deployment(docs, component):
    name = f"{FULLNAME}-{component}"
    return next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == name)


def test_every_service_has_ports_from_genaug_ports_and_native_grpc_probes():
    docs = render()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values["services"]) == set(DEFAULT_PORTS)
    for name, ports in DEFAULT_PORTS.items():
        assert values["services"][name]["port"] == ports.grpc
        assert values["services"][name]["metricsPort"] == ports.metrics
        pod = _deployment(docs, name.replace("_", "-"))["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["command"] == ["python", "-m", f"services.{name}"]
        probes = {
            k: container[k]["grpc"] for k in ("startupProbe", "readinessProbe", "livenessProbe")
        }
        assert all(p["port"] == ports.grpc and isinstance(p["port"], int) for p in probes.values())
        # Readiness on the service's own health name; liveness on the server's overall one.
        assert probes["readinessProbe"]["service"] == name
        assert probes["livenessProbe"]["service"] != probes["readinessProbe"]["service"]
        ctx = container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] and ctx["capabilities"]["drop"] == ["ALL"]
        assert pod["securityContext"]["runAsNonRoot"]
        args = dict(a.split("=", 1) for a in container["args"] if "=" in a)
        drain, grace = float(args["--drain-seconds"]), float(args["--grace-seconds"])
        pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
        assert pod["terminationGracePeriodSeconds"] > pre_stop + drain + grace
        assert "--max-connection-age-s" in args and "--max-connection-age-grace-s" in args
    services = {d["metadata"]["name"]: d for d in by_kind(docs, "Service")}
    assert services[f"{FULLNAME}-sampler-headless"]["spec"]["clusterIP"] == "None"


def test_service_flags_are_ones_the_services_accept():
    """Every flag the chart passes exists in the service's own --help."""
    from services.common.config import base_parser

    docs = chart.everything_on() + render(value_set("tls-token"))
    known = {a for action in base_parser("sampler")._actions for a in action.option_strings}
    known |= {
        "--encoder-target",
        "--motion-target",
        "--codec-target",
        "--max-batch-size",
        "--max-queue",
        "--gather-ms",
        "--conditions-cache-mib",
    }  # fmt: skip  (sampler flags, checked against its parser below)
    import argparse

    from services.sampler.__main__ import add_arguments

    sampler = argparse.ArgumentParser()
    add_arguments(sampler)
    sampler_flags = {a for action in sampler._actions for a in action.option_strings}
    assert {"--encoder-target", "--motion-target", "--codec-target", "--max-batch-size",
            "--max-queue", "--gather-ms", "--conditions-cache-mib"} <= sampler_flags  # fmt: skip
    for dep in by_kind(docs, "Deployment"):
        container = dep["spec"]["template"]["spec"]["containers"][0]
        if container["name"] == "triton":
            continue
        for arg in container["args"]:
            assert arg.split("=", 1)[0] in known, (dep["metadata"]["name"], arg)


def test_sampler_on_gpu_nodes():
    docs = render(value_set("gpu-keda"))
    pod = _deployment(docs, "sampler")["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert pod["runtimeClassName"] == "nvidia"
    assert "replicas" not in _deployment(docs, "sampler")["spec"]  # KEDA owns it


def test_sampler_gathering_and_conditions_cache_reach_its_flags():
    def sampler_args(*sets):
        container = _deployment(render(None, *sets), "sampler")["spec"]["template"]["spec"]
        return dict(a.split("=", 1) for a in container["containers"][0]["args"] if "=" in a)

    default = sampler_args()
    assert (default["--gather-ms"], default["--conditions-cache-mib"]) == ("100", "256")
    tuned = sampler_args("services.sampler.gatherMs=0", "services.sampler.conditionsCacheMiB=64")
    assert (tuned["--gather-ms"], tuned["--conditions-cache-mib"]) == ("0", "64")


def test_keda_scales_on_queue_depth_per_replica():
    docs = render(value_set("gpu-keda"))
    spec = by_kind(docs, "ScaledObject")[0]["spec"]
    trigger = spec["triggers"][0]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["query"] == (
        f'sum(genaug_sampler_queue_depth{{namespace="{NAMESPACE}",job="{FULLNAME}-sampler"}})'
    )
    assert trigger["metadata"]["threshold"] == "8"
    assert trigger["metadata"]["activationThreshold"] == "1"
    assert spec["minReplicaCount"] == 1 and spec["maxReplicaCount"] == 8
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300
    zero = by_kind(render(value_set("scale-to-zero")), "ScaledObject")[0]["spec"]
    assert zero["minReplicaCount"] == 0
    assert [t["type"] for t in zero["triggers"]] == ["prometheus", "kubernetes-workload"]


def test_hpa_uses_the_adapter_metric():
    docs = render(value_set("hpa"))
    hpa = by_kind(docs, "HorizontalPodAutoscaler")[0]
    assert hpa["apiVersion"] == "autoscaling/v2"
    metric = hpa["spec"]["metrics"][0]["pods"]
    assert metric["metric"]["name"] == chart.adapter_rule()["name"]["as"]
    assert metric["target"] == {"type": "AverageValue", "averageValue": "4"}


def test_tls_and_token_are_wired_to_the_flags():
    docs = render(value_set("tls-token"))
    for component in ("sampler", "filter"):
        args = _deployment(docs, component)["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "--tls-cert=/etc/genaug/tls/tls.crt" in args
        assert "--tls-client-ca=/etc/genaug/tls/ca.crt" in args
        assert "--auth-token-file=/etc/genaug/auth/token" in args
        assert not any(a.startswith("--auth-token=") for a in args)
    job_args = by_kind(docs, "Job")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    for flag in (
        "--tls-ca=",
        "--tls-cert=",
        "--tls-key=",
        "--tls-server-name=",
        "--auth-token-file=",
    ):
        assert any(a.startswith(flag) for a in job_args), flag


def test_batch_job_is_indexed_and_retries_on_disruption():
    job = by_kind(render(value_set("job")), "Job")[0]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == 8
    assert spec["backoffLimitPerIndex"] == 2 and spec["parallelism"] == 4
    rules = spec["podFailurePolicy"]["rules"]
    assert {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    } in rules
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    container = pod["containers"][0]
    args = container["args"]
    for expected in ("--filter-scope=job", "--per-class=50", "--steps=30", "--guidance=2.5",
                     f"--sampler=dns:///{FULLNAME}-sampler-headless:50053"):  # fmt: skip
        assert expected in args
    assert not any(a.startswith("--shard-index") for a in args)  # from JOB_COMPLETION_INDEX
    assert {"name": "GENAUG_SHARD_COUNT", "value": "8"} in container["env"]
    claim = next(v for v in pod["volumes"] if v["name"] == "data")
    assert claim["persistentVolumeClaim"]["claimName"] == "genaug-data"


def test_augment_accepts_the_jobs_flags():
    import argparse

    from clients.augment.options import add_arguments, resolve

    job = by_kind(render(value_set("job")), "Job")[0]
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    env = {"JOB_COMPLETION_INDEX": "3", "GENAUG_SHARD_COUNT": "4"}
    options = resolve(parser.parse_args(args), env=env)
    assert (options.shard_index, options.shard_count) == (3, 4)
    assert options.filter_scope == "job"


@pytest.mark.parametrize(
    "bad",
    [
        "services.sampler.replicas=abc",
        "autoscaling.mode=sometimes",
        "job.steps=0",
        "job.filterScope=everything",
        "image.variant=rocm",
        "services.sampler.extraArgs[0]=rm",
        "services.sampler.gpu.count=0",
        "services.sampler.gatherMs=-1",
        "services.sampler.conditionsCacheMiB=-1",
        "autoscaling.targetQueueDepthPerReplica=0",
        "monitoring.prometheusRule.failureRatio=2",
        "unknownTopLevel=1",
    ],
)
def test_schema_rejects_bad_values(bad):
    out = run_helm("template", "r", str(CHART), "--set", bad)
    assert out.returncode != 0
    assert "values don't meet the specifications of the schema" in out.stderr, out.stderr


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("security.tls.enabled=true", "security.tls.secretName"),
        ("security.auth.enabled=true", "security.auth.existingSecret"),
        ("autoscaling.keda.scaleToZero=true", "autoscaling.mode keda"),
        ("models.source=volume", "models.existingClaim"),
    ],
)
def test_inconsistent_values_fail_with_the_reason(bad, reason):
    out = run_helm("template", "r", str(CHART), "--set", bad)
    assert out.returncode != 0 and reason in out.stderr, out.stderr


def test_dashboard_json_is_what_the_generator_builds():
    pytest.importorskip("grafana_foundation_sdk", reason="pip install -e '.[dev]'")
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "dashboard", chart.ROOT / "deploy/tools/dashboard.py"
    )
    dashboard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dashboard)
    assert chart.DASHBOARD.read_bytes() == dashboard.render().encode()
    board = json.loads(chart.DASHBOARD.read_text())
    titles = [p["title"] for p in board["panels"]]
    for wanted in ("Clips/s by priority", "Queue depth by priority", "Sampler replicas",
                   "Running batch size", "Denoising step latency", "Request latency by service",
                   "Failures by code", "Filter acceptance by level", "Service health"):  # fmt: skip
        assert wanted in titles
    configmap = next(
        d for d in chart.everything_on() if d["metadata"]["name"] == f"{FULLNAME}-dashboards"
    )
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["ctrl-genaug.json"]) == board


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_dockerfiles_are_multi_stage_non_root_pinned_with_the_ports(variant):
    text = (chart.ROOT / "deploy" / "docker" / f"Dockerfile.{variant}").read_text()
    assert text.count("\nFROM ") >= 2 and " AS runtime" in text
    assert "torch==2.13.0" in text
    assert "\nUSER 10001:10001" in text.split(" AS runtime", 1)[1]
    exposed = {
        int(p) for line in text.splitlines() if line.startswith("EXPOSE") for p in line.split()[1:]
    }
    assert exposed == {p for ports in DEFAULT_PORTS.values() for p in ports}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["models"]["path"] == "/app/deploy/model-repository"
    assert f"GENAUG_MODEL_DIR={values['models']['path']}" in text
