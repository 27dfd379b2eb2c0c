"""Options of `genaug augment`: flags, a YAML file with the same keys, and defaults.

Precedence (`genaug.config`): command-line flags, then the environment (only the shard: the
index from `$JOB_COMPLETION_INDEX` of a Kubernetes Indexed Job, the count from
`$GENAUG_SHARD_COUNT`), then `--config FILE.yaml` (keys are the flag names with `_` or `-`,
e.g. `per_class: 4`, `sampler: [a:50053, b:50053]`), then the defaults below. Every service
connection uses the same TLS and bearer-token settings (`--tls-ca`, `--tls-cert`/`--tls-key`
for mutual TLS, `--auth-token-file`, else `$GENAUG_AUTH_TOKEN`); the token is never written to
the job state or the report.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from clients.augment.references import CONDITION_KINDS
from clients.augment.sampling_defaults import fill_sampling_defaults
from clients.rpc.channel import ChannelSettings
from genaug import config
from genaug.config import add_flags, setting
from genaug.ports import default_target

FILTER_LEVELS = ("semantic", "sequential", "duplicates")
FILTER_SCOPES = ("job", "shard")
SEQUENTIAL_BANDS = ("pool", "class")
SCHEDULES = ("auto", "first", "overlapped")  # of the conditions (clients.augment.schedule)
TARGET = "target"  # --per-class, --multiplier and --balance: one choice, flags or YAML
CONNECTIONS = "connections (every service)"


@dataclass
class AugmentOptions:
    dataset_root: Path | None = setting(None, help="prepared dataset root (seed layout)")
    name: str | None = setting(
        None, help="dataset name <DS> (default: the only one under the root)"
    )
    out: Path | None = setting(None, help="output dataset root (+ .augment/ state, report/)")
    per_class: int | None = setting(None, help="N synthetic clips per class", exclusive=TARGET)
    multiplier: float | None = setting(
        None, help="X times each class's clip count", exclusive=TARGET
    )
    balance: bool = setting(False, help="up to the largest class", exclusive=TARGET)
    conditions: list[str] = setting(
        list(CONDITION_KINDS),
        choices=CONDITION_KINDS,
        help="conditions to use (default: prior motion text)",
    )
    # None: the generator's sampling.json (sampling_defaults)
    steps: int | None = setting(None, help="denoising steps (default: sampling.json, else 25)")
    guidance: float | None = setting(None, help="CFG scale (default: sampling.json, else 3)")
    solver: str | None = setting(
        None, choices=("ddim", "dpmsolver++"), help="(default: sampling.json)"
    )
    base_seed: int = setting(66, help="first seed of every reference clip (default 66)")
    classes_file: Path | None = setting(
        None, help="JSON class names in sampler id order (only for samplers without ListModels)"
    )
    model: str | None = setting(
        None, help="generator to sample with (the sampler's ListModels; default: its default)"
    )
    class_map: Path | None = setting(
        None,
        help="JSON object: dataset class name -> generator class name (classes not named "
        "must be generator classes as they are)",
    )
    allow_out_of_domain: bool = setting(
        False,
        help="generate even when the dataset's frame count, frame size or modality differ "
        "from the generator's card (the report then says so at the top)",
    )
    filter_alpha: float = setting(1.0, help="semantic level alpha (default 1.0)")
    duplicate_threshold: float = setting(0.98, help="near-duplicate cosine (0.98)")
    filter_skip: list[str] = setting([], choices=FILTER_LEVELS, help="levels that keep all")
    no_filter: bool = setting(False, help="keep every generated clip")
    filter_scope: str = setting(
        "job",
        choices=FILTER_SCOPES,
        help="job (default): shards sharing --out filter the whole job's pool once, exactly as "
        "one run would; shard: each shard filters its own pool",
    )
    sequential_band: str = setting(
        "class",
        choices=SEQUENTIAL_BANDS,
        help="class (default): fit the sequential VAE-Seq K-means band per class, on that "
        "class's clips; the pool-wide band of the reference can reject a whole class whose "
        "motion differs; pool: one band over the whole pool (reproduces the reference exactly)",
    )
    sampler: list[str] = setting(
        [default_target("sampler")], help="host:port ... or one dns:///name:port"
    )
    encoder: str | None = setting(None, help="condition encoder address (else the sampler fetches)")
    motion: str | None = setting(None, help="motion extractor address (else the sampler fetches)")
    filter: str | None = setting(
        default_target("filter"), help="filter address (default {default})"
    )
    concurrency: int = setting(4, help="generations in flight (default 4)")
    conditions_schedule: str = setting(
        "auto",
        choices=SCHEDULES,
        help="first: every reference's conditions before sampling starts; overlapped: each "
        "when its clip's turn comes, while earlier clips sample; auto (default): first when "
        "a service computing them and a sampler are both on this machine, whose cores they "
        "would contend for (clients.augment.schedule)",
    )
    deadline: float = setting(600.0, help="seconds per generation request (600)")
    max_attempts: int = setting(8, help="attempts per generation (default 8)")
    shard_index: int = setting(
        0, env="JOB_COMPLETION_INDEX", help="this shard ($JOB_COMPLETION_INDEX, else 0)"
    )
    shard_count: int = setting(
        1, env="GENAUG_SHARD_COUNT", help="shards ($GENAUG_SHARD_COUNT, else 1)"
    )
    save_npy: bool = setting(False, help="also write float32 .npy clips")
    progress: bool = setting(True, help="no progress bar")
    report: bool = setting(True, help="no HTML report")
    tls_ca: Path | None = setting(None, group=CONNECTIONS, help="PEM CA bundle: connect with TLS")
    tls_cert: Path | None = setting(None, group=CONNECTIONS, help="PEM client certificate (mTLS)")
    tls_key: Path | None = setting(None, group=CONNECTIONS, help="PEM client key (mTLS)")
    tls_server_name: str | None = setting(
        None, group=CONNECTIONS, help="expected server name, if not the host"
    )
    auth_token_file: Path | None = setting(
        None,
        group=CONNECTIONS,
        help="file holding the bearer token (else $GENAUG_AUTH_TOKEN; never a flag value, "
        "which other users could read in the process list)",
    )

    def __post_init__(self) -> None:
        fill_sampling_defaults(self)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help="YAML file with any of these options (flags win)"
    )
    add_flags(parser, AugmentOptions)


def resolve(args: argparse.Namespace, env: dict[str, str] | None = None) -> AugmentOptions:
    """Flags over the shard's env vars over the YAML file (`--config`) over the defaults."""
    options = config.resolve(
        AugmentOptions,
        args,
        yaml_file=getattr(args, "config", None),
        env=os.environ if env is None else env,
    )
    validate(options)
    return options


def validate(o: AugmentOptions) -> None:
    if o.dataset_root is None or o.out is None:
        raise ValueError("--dataset-root and --out are required")
    targets = [o.per_class is not None, o.multiplier is not None, bool(o.balance)]
    if sum(targets) != 1:
        raise ValueError("give exactly one of --per-class, --multiplier, --balance")
    if o.concurrency < 1 or o.max_attempts < 1 or o.deadline <= 0:
        raise ValueError("--concurrency and --max-attempts must be >= 1, --deadline > 0")
    if o.shard_count < 1 or not 0 <= o.shard_index < o.shard_count:
        raise ValueError(f"shard index {o.shard_index} is not in [0, {o.shard_count})")
    if (o.tls_cert is None) != (o.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together (mutual TLS)")
    if (o.tls_cert is not None or o.tls_server_name is not None) and o.tls_ca is None:
        raise ValueError("--tls-cert, --tls-key and --tls-server-name need --tls-ca")
    for name in ("tls_ca", "tls_cert", "tls_key", "auth_token_file", "class_map"):
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
