"""Options of `genaug augment`: flags, a YAML file with the same keys, and defaults.

Precedence: command-line flags, then `--config FILE.yaml` (keys are the flag names with `_` or
`-`, e.g. `per_class: 4`, `sampler: [a:50053, b:50053]`), then the defaults below. The shard
index defaults to `$JOB_COMPLETION_INDEX` (a Kubernetes Indexed Job) and the shard count to
`$GENAUG_SHARD_COUNT`. Every service connection uses the same TLS and bearer-token settings
(`--tls-ca`, `--tls-cert`/`--tls-key` for mutual TLS, `--auth-token-file`, else
`$GENAUG_AUTH_TOKEN`); the token is never written to the job state or the report.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from clients.augment.references import CONDITION_KINDS
from clients.augment.sampling_defaults import fill_sampling_defaults
from clients.rpc.channel import ChannelSettings
from genaug.ports import default_target

FILTER_LEVELS = ("semantic", "sequential", "duplicates")
FILTER_SCOPES = ("job", "shard")
SEQUENTIAL_BANDS = ("pool", "class")
TARGET_KEYS = ("per_class", "multiplier", "balance")


@dataclass
class AugmentOptions:
    dataset_root: Path | None = None
    name: str | None = None
    out: Path | None = None
    per_class: int | None = None
    multiplier: float | None = None
    balance: bool = False
    conditions: list[str] = field(default_factory=lambda: list(CONDITION_KINDS))
    steps: int | None = None  # None: the generator's sampling.json (sampling_defaults)
    guidance: float | None = None
    solver: str | None = None
    base_seed: int = 66
    classes_file: Path | None = None
    filter_alpha: float = 1.0
    duplicate_threshold: float = 0.98
    filter_skip: list[str] = field(default_factory=list)
    no_filter: bool = False
    filter_scope: str = "job"
    sequential_band: str = "class"
    sampler: list[str] = field(default_factory=lambda: [default_target("sampler")])
    encoder: str | None = None
    motion: str | None = None
    filter: str | None = default_target("filter")
    concurrency: int = 4
    deadline: float = 600.0
    max_attempts: int = 8
    shard_index: int | None = None
    shard_count: int | None = None
    save_npy: bool = False
    progress: bool = True
    report: bool = True
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str | None = None
    auth_token_file: Path | None = None

    def __post_init__(self) -> None:
        fill_sampling_defaults(self)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags default to "not given" so that a YAML value is only overridden by a real flag."""
    s = argparse.SUPPRESS
    a = parser.add_argument
    a("--config", type=Path, help="YAML file with any of these options (flags win)")
    a("--dataset-root", type=Path, default=s, help="prepared dataset root (seed layout)")
    a("--name", default=s, help="dataset name <DS> (default: the only one under the root)")
    a("--out", type=Path, default=s, help="output dataset root (+ .augment/ state, report/)")
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--per-class", type=int, default=s, help="N synthetic clips per class")
    g.add_argument("--multiplier", type=float, default=s, help="X times each class's clip count")
    g.add_argument("--balance", action="store_true", default=s, help="up to the largest class")
    a(
        "--conditions",
        nargs="+",
        choices=CONDITION_KINDS,
        default=s,
        help="conditions to use (default: prior motion text)",
    )
    a("--steps", type=int, default=s, help="denoising steps (default: sampling.json, else 25)")
    a("--guidance", type=float, default=s, help="CFG scale (default: sampling.json, else 3)")
    a("--solver", default=s, choices=["ddim", "dpmsolver++"], help="(default: sampling.json)")
    a("--base-seed", type=int, default=s, help="first seed of every reference clip (default 66)")
    a("--classes-file", type=Path, default=s, help="JSON class names in sampler id order")
    a("--filter-alpha", type=float, default=s, help="semantic level alpha (default 1.0)")
    a("--duplicate-threshold", type=float, default=s, help="near-duplicate cosine (0.98)")
    a("--filter-skip", nargs="+", choices=FILTER_LEVELS, default=s, help="levels that keep all")
    a("--no-filter", action="store_true", default=s, help="keep every generated clip")
    a(
        "--filter-scope",
        choices=FILTER_SCOPES,
        default=s,
        help="job (default): shards sharing --out filter the whole job's pool once, exactly as "
        "one run would; shard: each shard filters its own pool",
    )
    a(
        "--sequential-band",
        choices=SEQUENTIAL_BANDS,
        default=s,
        help="class (default): fit the sequential VAE-Seq K-means band per class, on that "
        "class's clips; the pool-wide band of the reference can reject a whole class whose "
        "motion differs; pool: one band over the whole pool (reproduces the reference exactly)",
    )
    a("--sampler", nargs="+", default=s, help="host:port ... or one dns:///name:port")
    a("--encoder", default=s, help="condition encoder address (else the sampler fetches)")
    a("--motion", default=s, help="motion extractor address (else the sampler fetches)")
    a("--filter", default=s, help=f"filter address (default {default_target('filter')})")
    a("--concurrency", type=int, default=s, help="generations in flight (default 4)")
    a("--deadline", type=float, default=s, help="seconds per generation request (600)")
    a("--max-attempts", type=int, default=s, help="attempts per generation (default 8)")
    a("--shard-index", type=int, default=s, help="this shard ($JOB_COMPLETION_INDEX, else 0)")
    a("--shard-count", type=int, default=s, help="shards ($GENAUG_SHARD_COUNT, else 1)")
    a("--save-npy", action="store_true", default=s, help="also write float32 .npy clips")
    a("--no-progress", dest="progress", action="store_false", default=s, help="no progress bar")
    a("--no-report", dest="report", action="store_false", default=s, help="no HTML report")
    t = parser.add_argument_group("connections (every service)")
    t.add_argument("--tls-ca", type=Path, default=s, help="PEM CA bundle: connect with TLS")
    t.add_argument("--tls-cert", type=Path, default=s, help="PEM client certificate (mTLS)")
    t.add_argument("--tls-key", type=Path, default=s, help="PEM client key (mTLS)")
    t.add_argument("--tls-server-name", default=s, help="expected server name, if not the host")
    t.add_argument(
        "--auth-token-file",
        type=Path,
        default=s,
        help="file holding the bearer token (else $GENAUG_AUTH_TOKEN; never a flag value, "
        "which other users could read in the process list)",
    )


def resolve(args: argparse.Namespace, env: dict[str, str] | None = None) -> AugmentOptions:
    """Merge flags over the YAML file over the defaults; fill in the shard from the env."""
    env = os.environ if env is None else env
    known = {f.name for f in fields(AugmentOptions)}
    values: dict = {}
    config = getattr(args, "config", None)
    if config is not None:
        loaded = yaml.safe_load(Path(config).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config}: expected a mapping of option names to values")
        for key, value in loaded.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise ValueError(f"{config}: unknown option {key!r}")
            values[name] = value
    given = {k: v for k, v in vars(args).items() if k in known}
    if given.keys() & set(TARGET_KEYS):  # a target flag replaces a YAML target of any kind
        for key in TARGET_KEYS:
            values.pop(key, None)
    values.update(given)
    options = AugmentOptions(**values)
    for name in ("dataset_root", "out", "classes_file", "tls_ca", "tls_cert", "tls_key",
                 "auth_token_file"):  # fmt: skip
        value = getattr(options, name)
        if value is not None:
            setattr(options, name, Path(value))
    if isinstance(options.sampler, str):
        options.sampler = [options.sampler]
    if isinstance(options.conditions, str):
        options.conditions = [options.conditions]
    if options.shard_index is None:
        options.shard_index = int(env.get("JOB_COMPLETION_INDEX", 0))
    if options.shard_count is None:
        options.shard_count = int(env.get("GENAUG_SHARD_COUNT", 1))
    validate(options)
    return options


def validate(o: AugmentOptions) -> None:
    if o.dataset_root is None or o.out is None:
        raise ValueError("--dataset-root and --out are required")
    targets = [o.per_class is not None, o.multiplier is not None, bool(o.balance)]
    if sum(targets) != 1:
        raise ValueError("give exactly one of --per-class, --multiplier, --balance")
    if not set(o.conditions) <= set(CONDITION_KINDS):
        raise ValueError(f"--conditions must be among {CONDITION_KINDS}")
    if o.filter_scope not in FILTER_SCOPES:
        raise ValueError(f"--filter-scope must be one of {FILTER_SCOPES}")
    if o.sequential_band not in SEQUENTIAL_BANDS:
        raise ValueError(f"--sequential-band must be one of {SEQUENTIAL_BANDS}")
    if not set(o.filter_skip) <= set(FILTER_LEVELS):
        raise ValueError(f"--filter-skip must be among {FILTER_LEVELS}")
    if o.concurrency < 1 or o.max_attempts < 1 or o.deadline <= 0:
        raise ValueError("--concurrency and --max-attempts must be >= 1, --deadline > 0")
    if o.shard_count < 1 or not 0 <= o.shard_index < o.shard_count:
        raise ValueError(f"shard index {o.shard_index} is not in [0, {o.shard_count})")
    if (o.tls_cert is None) != (o.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together (mutual TLS)")
    if (o.tls_cert is not None or o.tls_server_name is not None) and o.tls_ca is None:
        raise ValueError("--tls-cert, --tls-key and --tls-server-name need --tls-ca")
    for name in ("tls_ca", "tls_cert", "tls_key", "auth_token_file"):
        path = getattr(o, name)
        if path is not None and not path.is_file():
            raise ValueError(f"--{name.replace('_', '-')}: no such file: {path}")
    if len(o.sampler) > 1 and any(t.startswith("dns:") for t in o.sampler):
        raise ValueError("give either one dns:///name:port or several host:port samplers")


def channel_settings(o: AugmentOptions, env: dict[str, str] | None = None) -> ChannelSettings:
    """The TLS and token settings of every connection the job opens."""
    env = os.environ if env is None else env
    if o.auth_token_file is not None:
        token = o.auth_token_file.read_text().strip()
        if not token:
            raise ValueError(f"--auth-token-file: {o.auth_token_file} is empty")
    else:
        token = env.get("GENAUG_AUTH_TOKEN") or None
    return ChannelSettings(
        token=token,
        ca_cert=o.tls_ca,
        client_cert=o.tls_cert,
        client_key=o.tls_key,
        server_name_override=o.tls_server_name,
    )
