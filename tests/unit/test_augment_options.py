"""`genaug augment` options (flags over YAML over defaults) and its replica retries."""

from __future__ import annotations

import argparse

import grpc
import pytest

from clients.augment.options import add_arguments, channel_settings, resolve
from clients.augment.replicas import JobFailed, ReplicaPool, generate_with_retries
from clients.augment.sampling_defaults import sampling_defaults
from clients.rpc.errors import GenAugError


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text(
        "dataset-root: data\nout: aug\nmultiplier: 2\nsteps: 10\n"
        "sampler: [a:1, b:2]\nconditions: [prior, motion]\n"
    )
    o = resolve(_parse(["--config", str(config), "--steps", "25", "--per-class", "3"]), env={})
    assert o.steps == 25 and o.per_class == 3 and o.multiplier is None  # flag target wins
    assert o.sampler == ["a:1", "b:2"] and o.conditions == ["prior", "motion"]
    assert o.guidance == sampling_defaults().guidance and o.base_seed == 66 and str(o.out) == "aug"
    assert (o.shard_index, o.shard_count) == (0, 1)


def test_shard_from_the_indexed_job_environment():
    args = _parse(["--dataset-root", "d", "--out", "o", "--balance"])
    o = resolve(args, env={"JOB_COMPLETION_INDEX": "2", "GENAUG_SHARD_COUNT": "4"})
    assert (o.shard_index, o.shard_count) == (2, 4)
    with pytest.raises(ValueError, match="shard index"):
        resolve(args, env={"JOB_COMPLETION_INDEX": "4", "GENAUG_SHARD_COUNT": "4"})


def test_invalid_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        resolve(_parse(["--dataset-root", "d", "--out", "o"]), env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 3\n")
    with pytest.raises(ValueError, match="unknown option"):
        resolve(_parse(["--config", str(bad)]), env={})
    with pytest.raises(SystemExit):
        _parse(["--per-class", "1", "--balance"])


def test_sequential_band_defaults_to_class_and_the_flag_or_yaml_picks_pool(tmp_path):
    base = ["--dataset-root", "d", "--out", "o", "--per-class", "2"]
    assert resolve(_parse(base), env={}).sequential_band == "class"
    assert resolve(_parse([*base, "--sequential-band", "pool"]), env={}).sequential_band == "pool"
    config = tmp_path / "job.yaml"
    config.write_text("sequential-band: pool\n")
    from_yaml = resolve(_parse([*base, "--config", str(config)]), env={})
    assert from_yaml.sequential_band == "pool"
    flag_wins = [*base, "--config", str(config), "--sequential-band", "class"]
    assert resolve(_parse(flag_wins), env={}).sequential_band == "class"
    with pytest.raises(SystemExit):
        _parse([*base, "--sequential-band", "case"])
    config.write_text("sequential_band: case\n")
    with pytest.raises(ValueError, match="--sequential-band must be one of"):
        resolve(_parse([*base, "--config", str(config)]), env={})


def test_sequential_band_help_says_what_each_choice_does(capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--sequential-band {pool,class}" in text
    assert "reject a whole class whose motion differs" in text
    assert "reproduces the reference exactly" in text


class _Client:
    def __init__(self, outcomes):
        self.outcomes = list(outcomes)
        self.request_ids = []

    def generate(self, request_id):
        self.request_ids.append(request_id)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def test_a_transient_failure_moves_to_the_next_replica_with_the_same_request_id():
    pool = ReplicaPool(["127.0.0.1:1", "127.0.0.1:2"], cooldown=30.0)
    down = GenAugError(grpc.StatusCode.UNAVAILABLE, "connection refused")
    a, b = _Client([down]), _Client(["clip-1", "clip-2"])
    pool.replicas[0].client, pool.replicas[1].client = a, b
    clip, replica, attempts = generate_with_retries(
        pool, lambda client: client.generate("item-1.k"), backoff=0.01
    )
    assert (clip, replica.target, attempts) == ("clip-1", "127.0.0.1:2", 2)
    assert a.request_ids == b.request_ids == ["item-1.k"]
    # The failed replica cools down: the next request goes to the healthy one again.
    clip, replica, _ = generate_with_retries(pool, lambda c: c.generate("item-2.k"))
    assert (clip, replica.target) == ("clip-2", "127.0.0.1:2")
    pool.close()


def test_a_request_error_fails_the_job_without_retrying():
    pool = ReplicaPool(["127.0.0.1:1"])
    bad = GenAugError(grpc.StatusCode.INVALID_ARGUMENT, "class_id: 7 is not in [0, 3)")
    client = _Client([bad, "never"])
    pool.replicas[0].client = client
    with pytest.raises(JobFailed, match="class_id"):
        generate_with_retries(pool, lambda c: c.generate("x"), backoff=0.01)
    assert client.request_ids == ["x"]
    pool.close()


def test_attempts_are_bounded():
    pool = ReplicaPool(["127.0.0.1:1"], cooldown=0.01)
    busy = GenAugError(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
    pool.replicas[0].client = _Client([busy] * 3)
    with pytest.raises(JobFailed, match="3 attempts"):
        generate_with_retries(pool, lambda c: c.generate("x"), max_attempts=3, backoff=0.01)
    pool.close()


def test_request_ids_are_content_addressed():
    from clients.augment.generation import GenerationSettings, request_id
    from clients.augment.plan import WorkItem
    from clients.rpc.sampler import conditions_message

    item = WorkItem("A-c0_s00-66", "A", 0, "c0_s00.avi", 66)
    settings = GenerationSettings(25, 3.0, "ddim", 60.0, 3)
    text = conditions_message(text="thick wall")
    same = request_id(item, conditions_message(text="thick wall"), settings)
    assert request_id(item, text, settings) == same and same.startswith(item.id + ".")
    assert request_id(item, conditions_message(text="thin wall"), settings) != same
    other = GenerationSettings(50, 3.0, "ddim", 60.0, 3)
    assert request_id(item, text, other) != same


def test_a_dns_target_balances_round_robin_explicit_ones_do_not():
    import json

    from clients.rpc.channel import ChannelSettings, channel_options
    from clients.rpc.channel import with_load_balancing as _with_lb

    def policy(settings):
        config = json.loads(dict(channel_options(settings))["grpc.service_config"])
        return config.get("loadBalancingConfig")

    base = ChannelSettings()
    assert policy(base) is None
    assert policy(_with_lb(base, "round_robin")) == [{"round_robin": {}}]
    assert base.load_balancing is None  # the caller's settings are not changed
    pool = ReplicaPool(["dns:///localhost:1"])
    assert len(pool.replicas) == 1
    pool.close()


def test_connection_flags_give_the_channel_settings_of_every_service(tmp_path):
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("pem")
    (tmp_path / "token").write_text("s3cret\n")
    base = ["--dataset-root", "d", "--out", "o", "--balance"]
    o = resolve(
        _parse([*base, "--tls-ca", str(tmp_path / "ca.pem"), "--tls-cert",
                str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem"),
                "--tls-server-name", "genaug.internal", "--auth-token-file",
                str(tmp_path / "token")]),
        env={},
    )  # fmt: skip
    settings = channel_settings(o, env={"GENAUG_AUTH_TOKEN": "from-env"})
    assert settings.token == "s3cret"  # the file wins over the environment
    assert settings.ca_cert == tmp_path / "ca.pem" and settings.client_key == tmp_path / "key.pem"
    assert settings.server_name_override == "genaug.internal"
    plain = resolve(_parse(base), env={})
    assert channel_settings(plain, env={"GENAUG_AUTH_TOKEN": "from-env"}).token == "from-env"
    assert channel_settings(plain, env={}).token is None
    assert channel_settings(plain, env={}).ca_cert is None


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--tls-cert", "{d}/ca.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-server-name", "x"], "need --tls-ca"),
        (["--tls-ca", "{d}/missing.pem"], "--tls-ca: no such file"),
        (["--auth-token-file", "{d}/missing"], "--auth-token-file: no such file"),
    ],
)
def test_bad_connection_flags_are_named(tmp_path, extra, message):
    (tmp_path / "ca.pem").write_text("pem")
    argv = ["--dataset-root", "d", "--out", "o", "--balance"]
    argv += [word.format(d=tmp_path) for word in extra]
    with pytest.raises(ValueError, match=message):
        resolve(_parse(argv), env={})


def test_an_empty_token_file_is_an_error(tmp_path):
    (tmp_path / "token").write_text("\n")
    argv = ["--dataset-root", "d", "--out", "o", "--balance"]
    o = resolve(_parse([*argv, "--auth-token-file", str(tmp_path / "token")]), env={})
    with pytest.raises(ValueError, match="is empty"):
        channel_settings(o, env={})


def test_conditions_schedule_defaults_to_auto_and_yaml_refuses_other_values(tmp_path):
    base = ["--dataset-root", "d", "--out", "o", "--per-class", "2"]
    assert resolve(_parse(base), env={}).conditions_schedule == "auto"
    flag = resolve(_parse([*base, "--conditions-schedule", "first"]), env={})
    assert flag.conditions_schedule == "first"
    config = tmp_path / "job.yaml"
    config.write_text("conditions_schedule: overlapped\n")
    from_yaml = resolve(_parse([*base, "--config", str(config)]), env={})
    assert from_yaml.conditions_schedule == "overlapped"
    config.write_text("conditions_schedule: on\n")  # YAML reads `on` as true: not a schedule
    with pytest.raises(ValueError, match="conditions"):
        resolve(_parse([*base, "--config", str(config)]), env={})
    with pytest.raises(SystemExit):
        _parse([*base, "--conditions-schedule", "later"])
