"""Build the Grafana dashboard of the Helm chart as code (Grafana's grafana-foundation-sdk).

    python deploy/tools/dashboard.py          # writes helm/ctrl-genaug/dashboards/ctrl-genaug.json
    python deploy/tools/dashboard.py --check  # exit 1 if the committed JSON is stale

The JSON is generated, never edited by hand; a test regenerates it and compares the bytes, and
tests/deploy evaluates every expression below on a real Prometheus scraping live services.
`$namespace` is the dashboard's namespace variable, `$__rate_interval` Grafana's rate window.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableOption, VariableRefresh

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "helm" / "ctrl-genaug" / "dashboards" / "ctrl-genaug.json"
UID = "ctrl-genaug-serving"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
NS = 'namespace=~"$namespace"'
RATE = "$__rate_interval"


def _query(expr: str, legend: str, ref: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).range()


def _timeseries(title: str, description: str, unit: str, queries: list[tuple[str, str]]):
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(8)
        .span(12)
        .min(0)
    )
    for i, (expr, legend) in enumerate(queries):
        panel = panel.with_target(_query(expr, legend, chr(ord("A") + i)))
    return panel


def _quantiles(metric: str, by: str, legend: str) -> list[tuple[str, str]]:
    grouping = f"{by}, le" if by else "le"
    return [
        (
            f"histogram_quantile({q}, sum by ({grouping}) (rate({metric}_bucket{{{NS}}}[{RATE}])))",
            f"p{round(q * 100)} {legend}".strip(),
        )
        for q in (0.5, 0.95)
    ]


def panels():
    """The panels, in order (two per row)."""
    return [
        _timeseries(
            "Clips/s by priority",
            "Clips generated per second by the samplers (interactive vs batch).",
            "ops",
            [
                (
                    f"sum by (priority) (rate(genaug_sampler_clips_total{{{NS}}}[{RATE}]))",
                    "{{priority}}",
                )
            ],
        ),
        _timeseries(
            "Queue depth by priority",
            "Requests waiting for a batch slot, all replicas: the autoscalers' signal.",
            "short",
            [(f"sum by (priority) (genaug_sampler_queue_depth{{{NS}}})", "{{priority}}")],
        ),
        _timeseries(
            "Sampler replicas",
            "Sampler pods scraped, and those reporting SERVING.",
            "short",
            [
                (f'count(genaug_service_serving{{{NS},service="sampler"}})', "scraped"),
                (f'sum(genaug_service_serving{{{NS},service="sampler"}})', "serving"),
            ],
        ),
        _timeseries(
            "Running batch size",
            "Requests in each sampler's running batch (continuous batching).",
            "short",
            [(f"sum by (pod) (genaug_sampler_running_batch_size{{{NS}}})", "{{pod}}")],
        ),
        _timeseries(
            "Denoising step latency",
            "Wall time of one denoising step of the running batch.",
            "s",
            _quantiles("genaug_sampler_step_seconds", "", ""),
        ),
        _timeseries(
            "Request latency by service",
            "RPC handling time, arrival to last response message.",
            "s",
            _quantiles("genaug_rpc_latency_seconds", "service", "{{service}}"),
        ),
        _timeseries(
            "Failures by code",
            "RPCs ending with a non-OK status, per second.",
            "ops",
            [
                (
                    f"sum by (service, code) (rate(genaug_rpc_failures_total{{{NS}}}[{RATE}]))",
                    "{{service}} {{code}}",
                )
            ],
        ),
        _timeseries(
            "Filter acceptance by level",
            "Share of the clips reaching each filter level that pass it (pool: kept overall).",
            "percentunit",
            [
                (
                    f'sum by (level) (rate(genaug_filter_verdicts_total{{{NS},verdict="pass"}}'
                    f"[{RATE}])) / sum by (level) (rate(genaug_filter_verdicts_total{{{NS}}}"
                    f"[{RATE}]))",
                    "{{level}}",
                )
            ],
        ),
        _timeseries(
            "Conditions named by digest",
            "Generate requests that named their conditions by digest instead of sending them, "
            "by whether the sampler still held them (a miss costs the client one resend).",
            "ops",
            [
                (
                    f"sum by (result) (rate(genaug_sampler_conditions_cache_total{{{NS}}}"
                    f"[{RATE}]))",
                    "{{result}}",
                )
            ],
        ),
        _timeseries(
            "Conditions kept by digest",
            "Bytes of received conditions each sampler keeps (bounded by conditionsCacheMiB).",
            "bytes",
            [(f"sum by (pod) (genaug_sampler_conditions_cache_bytes{{{NS}}})", "{{pod}}")],
        ),
        stat.Panel()
        .title("Service health")
        .description("1: SERVING, 0: NOT_SERVING (loading or draining), per service.")
        .datasource(DATASOURCE)
        .height(5)
        .span(24)
        .with_target(
            _query(f"min by (service) (genaug_service_serving{{{NS}}})", "{{service}}", "A")
        ),
    ]


def build() -> dict:
    board = (
        dashboard.Dashboard("Ctrl-GenAug serving")
        .uid(UID)
        .tags(["ctrl-genaug", "diffusion", "grpc"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .with_variable(
            dashboard.DatasourceVariable("datasource")
            .label("Data source")
            .type("prometheus")
            .current(VariableOption(text="Prometheus", value="prometheus"))
        )
        .with_variable(
            dashboard.QueryVariable("namespace")
            .label("Namespace")
            .datasource(DATASOURCE)
            .query("label_values(genaug_service_serving, namespace)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .include_all(True)
            .multi(True)
        )
    )
    for panel in panels():
        board = board.with_panel(panel)
    return board.build()


def render() -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(build()) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    parser.add_argument("--out", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        same = args.out.is_file() and args.out.read_text() == text
        if not same:
            print(f"{args.out} is stale: run python deploy/tools/dashboard.py", file=sys.stderr)
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
