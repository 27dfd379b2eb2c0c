"""Monitoring proven on a real Prometheus.

Starts the sampler and the filter as processes, a Prometheus (Debian's package) on loopback
scraping them with the labels the chart's ServiceMonitor gives (namespace, job = the Service
name, pod) and evaluating the chart's rendered recording and alert rules, drives a few short
generations, one bad request and a filter call, then evaluates over the HTTP API every PromQL
expression of the dashboard, the KEDA trigger, the prometheus-adapter rule and the rules.
`promtool check rules` / `promtool test rules` check the rules offline (alerts fire on synthetic
series, stay silent at rest).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
import yaml

from clients.local_cluster import LocalCluster
from clients.rpc.channel import open_channel
from clients.rpc.errors import GenAugError
from clients.rpc.filter import FilterClient, PoolClip
from clients.rpc.sampler import SamplerClient
from tests.deploy import chart
from tests.deploy.chart import FULLNAME, NAMESPACE
from tests.service.test_sampler import _conditions
from tests.support import free_port, scrape

INSTALL = (
    "prometheus/promtool: apt-get install -y --no-install-recommends prometheus "
    "(.ci/run does this before make test)"
)
COMPONENTS = {"sampler": "sampler", "filter": "filter"}
CLIPS = 3
STEPS = 2


def _binary(name: str) -> str:
    return chart.require(shutil.which(name), INSTALL)


def _rules(docs) -> dict:
    """The chart's PrometheusRule as a Prometheus rule file."""
    groups = [g for d in chart.by_kind(docs, "PrometheusRule") for g in d["spec"]["groups"]]
    return json.loads(json.dumps({"groups": groups}))  # a copy the caller may change


class Prometheus:
    def __init__(self, url: str):
        self.url = url

    def get(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[tuple[dict, float]]:
        data = self.get("/api/v1/query", query=expr)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]


def _wait(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(what)


@pytest.fixture(scope="module")
def docs():
    return chart.everything_on()


@pytest.fixture(scope="module")
def observed(tmp_path_factory, docs):
    """(cluster, Prometheus or None) after the traffic, once Prometheus has scraped it."""
    tmp = tmp_path_factory.mktemp("monitoring")
    prometheus_bin = shutil.which("prometheus")
    with LocalCluster(list(COMPONENTS), log_dir=tmp / "logs") as cluster:
        prom, process = None, None
        if prometheus_bin:
            rules = _rules(docs)
            for group in rules["groups"]:
                group["interval"] = "1s"  # evaluate as often as we scrape
            (tmp / "rules.yml").write_text(yaml.safe_dump(rules))
            scrape_configs = [
                {
                    "job_name": f"{FULLNAME}-{component}",
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{cluster.services[name].metrics_port}"],
                            "labels": {
                                "namespace": NAMESPACE,
                                "pod": f"{FULLNAME}-{component}-0",
                                "container": component,
                                "endpoint": "metrics",
                            },
                        }
                    ],
                }
                for name, component in COMPONENTS.items()
            ]
            config = {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(tmp / "rules.yml")],
                "scrape_configs": scrape_configs,
            }
            (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
            port = free_port()
            log = open(tmp / "prometheus.log", "w")  # noqa: SIM115 - owned by the child
            process = subprocess.Popen(
                [
                    prometheus_bin,
                    f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],  # fmt: skip
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
            prom = Prometheus(f"http://127.0.0.1:{port}")
            _wait(lambda: len(prom.query("up == 1")) == len(COMPONENTS), 60, "targets never up")
        try:
            # Labelled series appear at their first value, so rate() sees an increase only from
            # the second round on: one round creates the series, scraped, then the measured one.
            _drive(cluster, clips=2)
            if prom is not None:
                _wait(
                    lambda: len(prom.query("genaug_filter_verdicts_total")) > 0,
                    30,
                    "first round never scraped",
                )
            _drive(cluster, clips=CLIPS)
            if prom is not None:
                # The increases scraped, and enough samples after them for rate() and the rules.
                _wait(
                    lambda: (
                        sum(v for _, v in prom.query("genaug_sampler_clips_total")) >= CLIPS + 2
                    ),
                    30,
                    "clips never scraped",
                )
                time.sleep(4)
            yield cluster, prom
        finally:
            if process is not None:
                process.terminate()
                process.wait(timeout=30)


def _drive(cluster, clips: int):
    with open_channel(cluster.services["sampler"].target) as channel:
        sampler = SamplerClient(channel)
        clips = [
            sampler.generate(0, seed=i, steps=STEPS, batch=i == 0, timeout=300)
            for i in range(CLIPS)
        ]
        with pytest.raises(GenAugError):  # one failure for the failures-by-code panel
            sampler.generate(10_000, steps=STEPS, timeout=60)
        # The same conditions twice: sent in full, then by digest (a hit for the cache panel).
        conditions = _conditions()
        for seed in (0, 1):
            sampler.generate(0, conditions, seed=seed, steps=STEPS, decode=False, timeout=300)
    with open_channel(cluster.services["filter"].target) as channel:
        FilterClient(channel).filter_pool(
            [
                PoolClip(f"c{i}", "case0", 0, c.frames.astype(np.float32))
                for i, c in enumerate(clips)
            ],
            timeout=300,
        )


def _expressions(docs):
    pods = [f"{FULLNAME}-sampler-0"]
    return (
        chart.dashboard_expressions()
        + chart.keda_expressions(docs)
        + [chart.adapter_expression(pods)]
        + chart.rule_expressions(docs)
    )


def test_every_metric_used_exists_in_a_live_scrape(observed, docs):
    cluster, _ = observed
    text = "".join(scrape(s.metrics_port) for s in cluster.services.values())
    exposed = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    exposed |= {n.removesuffix(s) for n in exposed for s in ("_bucket", "_count", "_sum")}
    used = chart.metric_names(_expressions(docs))
    assert used and not used - exposed, f"not exposed: {sorted(used - exposed)}"


def test_every_expression_evaluates_to_a_plausible_series(observed, docs, capsys):
    _, prom = observed
    if prom is None:
        chart.require(None, INSTALL)
    results = {}
    for source, expr in _expressions(docs):
        series = prom.query(expr)  # a parse error fails the request (status "error")
        results[source] = series
        with capsys.disabled():
            shown = ", ".join(f"{_labels(m)}={v:.4g}" for m, v in series[:4]) or "(empty)"
            print(f"\n  {source}: {shown}")
        if source.startswith("alert"):
            assert series == [], f"{source} fires at rest: {series}"
            continue
        assert series, f"{source} returned nothing: {expr}"
        assert all(math.isfinite(v) and v >= 0 for _, v in series), (source, series)
    # Plausibility of what was just done.
    assert _only(results["panel Clips/s by priority A"], priority="interactive") > 0
    assert _only(results["panel Clips/s by priority A"], priority="batch") > 0
    assert _only(results["record genaug:sampler_clips:rate5m"], priority="interactive") > 0
    assert all(v == 0 for _, v in results["keda prometheus"])
    assert all(v == 0 for _, v in results["adapter metricsQuery"])
    assert all(v == 0 for _, v in results["panel Queue depth by priority A"])
    assert _only(results["panel Sampler replicas B"]) == 1
    assert _only(results["panel Sampler replicas A"]) == 1
    assert {m["code"] for m, _ in results["panel Failures by code A"]} >= {"INVALID_ARGUMENT"}
    assert {m["level"] for m, _ in results["panel Filter acceptance by level A"]} >= {
        "semantic",
        "pool",
    }
    assert _only(results["panel Conditions named by digest A"], result="hit") > 0
    assert _only(results["panel Conditions named by digest A"], result="miss") == 0
    assert _only(results["panel Conditions kept by digest A"]) > 4e6  # one reference's
    step_p95 = _only(results["panel Denoising step latency B"])
    assert 0 < step_p95 < 60
    # Recording rules were evaluated by Prometheus itself, not only as ad-hoc queries.
    for source, _ in chart.rule_expressions(docs):
        if source.startswith("record "):
            assert prom.query(source.removeprefix("record ")), f"{source} never recorded"
    firing = [a for a in prom.get("/api/v1/alerts")["alerts"] if a["state"] == "firing"]
    assert firing == []


def _labels(metric: dict) -> str:
    keys = ("priority", "service", "code", "level", "pod", "result")
    shown = {k: v for k, v in metric.items() if k in keys}
    return ",".join(f"{k}={v}" for k, v in sorted(shown.items())) or "value"


def _only(series, **labels) -> float:
    matching = [v for m, v in series if all(m.get(k) == v for k, v in labels.items())]
    assert len(matching) == 1, (labels, series)
    return matching[0]


def test_promtool_checks_the_rules(docs, tmp_path):
    promtool = _binary("promtool")
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(_rules(docs)))
    out = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_alerts_fire_on_synthetic_series_and_stay_silent_at_rest(docs, tmp_path):
    promtool = _binary("promtool")
    # promtool compares annotations exactly; their templates are checked by `check rules`.
    rules = _rules(docs)
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    sampler = f'namespace="{NAMESPACE}",job="{FULLNAME}-sampler",service="sampler"'
    pool = f'namespace="{NAMESPACE}",job="{FULLNAME}-filter",level="pool"'
    generate = f'{sampler},method="Generate",model=""'

    def world(serving: str, requests: str, internal: str | None, passed: str, rejected: str):
        series = {
            f"genaug_service_serving{{{sampler}}}": serving,
            f"genaug_rpc_requests_total{{{generate}}}": requests,
            f'genaug_filter_verdicts_total{{{pool},verdict="pass"}}': passed,
            f'genaug_filter_verdicts_total{{{pool},verdict="reject"}}': rejected,
        }
        if internal:
            series[f'genaug_rpc_failures_total{{{generate},code="INTERNAL"}}'] = internal
        return [{"series": k, "values": v} for k, v in series.items()]

    def alert(name: str, **labels) -> dict:
        expected = [{"exp_labels": {"namespace": NAMESPACE, **labels}}] if labels else []
        return {"eval_time": "25m", "alertname": name, "exp_alerts": expected}

    silent = ("GenAugNoReadySampler", "GenAugSamplerAbsent", "GenAugRpcFailureRatioHigh",
              "GenAugFilterAcceptanceCollapsed", "GenAugSamplerQueueWaitHigh")  # fmt: skip
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "30s",
        "tests": [
            {  # at rest: one sampler serving, nothing failing, the filter keeping half
                "interval": "30s",
                "input_series": world("1x60", "0+10x60", None, "0+5x60", "0+5x60"),
                "alert_rule_test": [alert(name) for name in silent],
            },
            {  # broken: the sampler NOT_SERVING, half its calls INTERNAL, the filter keeps 1%
                "interval": "30s",
                "input_series": world("0x60", "0+10x60", "0+5x60", "0+0.1x60", "0+9.9x60"),
                "alert_rule_test": [
                    alert("GenAugNoReadySampler", severity="critical"),
                    alert("GenAugRpcFailureRatioHigh", severity="warning", service="sampler"),
                    alert("GenAugFilterAcceptanceCollapsed", severity="warning"),
                ],
            },
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    out = subprocess.run(
        [promtool, "test", "rules", "tests.yml"], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 0, out.stdout + out.stderr
