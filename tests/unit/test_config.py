"""`genaug.config`: a settings dataclass as flags, env vars and YAML, flags winning; and the
services' `ServerConfig` on it (every field a flag and a GENAUG_* variable)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest

from genaug.config import (
    ConfigError,
    add_flags,
    command_line,
    flags_of,
    resolve,
    setting,
    settings_of,
)


@dataclass
class Job:
    root: Path = setting(Path("data"), help="dataset root (default {default})")
    steps: int = setting(10, help="steps")
    rate: float = setting(0.5)
    name: str | None = setting(None, choices=("a", "b"))
    widths: list[int] = setting([8, 16])
    verbose: bool = setting(False, help="say more")
    progress: bool = setting(True, help="no progress bar")
    count: int | None = setting(None, exclusive="target")
    share: float | None = setting(None, exclusive="target")
    shard: int = setting(0, env="JOB_INDEX")
    internal: dict = setting({}, cli=False)


@dataclass
class LongJob(Job):
    steps: int = 100  # a new default; the flag and help stay Job's


def _parser(*classes, defaults=None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path)
    add_flags(parser, *classes, defaults=defaults)
    return parser


def _load(argv, env=None, cls=Job, prefix="APP_", **kwargs):
    args = _parser(cls).parse_args(argv)
    return resolve(cls, args, yaml_file=args.config, env=env or {}, env_prefix=prefix, **kwargs)


def test_flags_win_over_env_over_yaml_over_defaults(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("steps: 1\nrate: 0.25\nroot: from-yaml\nwidths: [4]\n")
    env = {"APP_STEPS": "2", "APP_RATE": "0.75"}
    job = _load(["--config", str(config), "--steps", "3"], env, defaults={"verbose": True})
    assert job.steps == 3  # flag over env and YAML
    assert job.rate == 0.75  # env over YAML
    assert job.root == Path("from-yaml") and job.widths == [4]  # YAML over the defaults
    assert job.verbose is True  # `defaults` over the class's default
    assert job.progress is True and job.shard == 0  # the class's defaults
    assert _load([]) == Job()  # nothing given: exactly the class's defaults


def test_a_flag_not_given_never_hides_a_lower_layer():
    args = _parser(Job).parse_args([])
    assert not {f.name for f in dataclasses.fields(Job)} & set(vars(args))
    assert _load([], {"APP_VERBOSE": "yes", "APP_PROGRESS": "0"}) == Job(
        verbose=True, progress=False
    )


def test_types_from_flags_yaml_and_env(tmp_path):
    job = _load(["--widths", "1", "2", "--root", "r", "--verbose", "--no-progress", "--rate", "2"])
    assert job.widths == [1, 2] and job.root == Path("r") and isinstance(job.root, Path)
    assert job.verbose is True and job.progress is False and job.rate == 2.0
    config = tmp_path / "job.yaml"
    config.write_text("widths: 32\nrate: 3\nname: null\nsteps: '7'\nverbose: true\n")
    job = _load(["--config", str(config)], {"APP_WIDTHS": "1, 2 3"})
    assert job.widths == [1, 2, 3]  # env text: commas or spaces
    assert job.rate == 3.0 and isinstance(job.rate, float)
    assert job.name is None and job.steps == 7 and job.verbose is True
    config.write_text("widths: 32\n")
    assert _load(["--config", str(config)]).widths == [32]  # one YAML value is a list of one


def test_dashed_and_underscored_yaml_keys(tmp_path):
    @dataclass
    class Sizes:
        batch_size: int = setting(1)

    config = tmp_path / "sizes.yaml"
    config.write_text("batch-size: 4\n")
    assert resolve(Sizes, {}, yaml_file=config, env={}).batch_size == 4
    config.write_text("batch_size: 5\n")
    assert resolve(Sizes, {}, yaml_file=config, env={}).batch_size == 5
    config.write_text("batch_size: 5\nbatch-size: 6\n")
    with pytest.raises(ConfigError, match="'batch_size' is given twice"):
        resolve(Sizes, {}, yaml_file=config, env={})


@pytest.mark.parametrize(
    "text, message",
    [
        ("stepz: 3\n", "job.yaml: unknown option 'stepz'"),
        ("internal: {}\n", "unknown option 'internal'"),  # code-only fields are no keys
        ("steps: ten\n", r"--steps expects an integer, got 'ten' \(steps in .*job.yaml\)"),
        ("steps: 2.5\n", "--steps expects an integer, got 2.5"),
        ("steps: true\n", "--steps expects an integer, got True"),
        ("rate: fast\n", "--rate expects a number, got 'fast'"),
        ("verbose: maybe\n", "--verbose expects true or false, got 'maybe'"),
        ("name: c\n", "--name must be one of a, b, got 'c'"),
        ("widths: [8, x]\n", "--widths expects an integer, got 'x'"),
        ("root: null\n", "--root needs a value"),
        ("root: [a]\n", "--root expects a path"),
        ("- steps\n", "expected a mapping of option names to values"),
    ],
)
def test_bad_yaml_is_refused_naming_the_key(tmp_path, text, message):
    config = tmp_path / "job.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        _load(["--config", str(config)])
    assert isinstance(error.value, ValueError)  # the CLI's "bad input"


def test_bad_env_is_refused_naming_the_variable():
    with pytest.raises(ConfigError, match=r"--steps expects an integer, got 'x' \(\$APP_STEPS\)"):
        _load([], {"APP_STEPS": "x"})
    with pytest.raises(ConfigError, match=r"--shard expects an integer, got 'one' \(\$JOB_INDEX"):
        _load([], {"JOB_INDEX": "one"})


def test_env_names_prefix_explicit_and_none():
    assert _load([], {"JOB_INDEX": "3", "APP_SHARD": "9"}).shard == 3  # the field's own name
    assert _load([], {"APP_STEPS": ""}).steps == 10  # empty is unset
    assert _load([], {"APP_STEPS": "4"}, prefix=None).steps == 10  # no prefix: explicit only
    assert _load([], {"JOB_INDEX": "2"}, prefix=None).shard == 2


def test_an_exclusive_choice_is_made_by_the_highest_layer(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("share: 0.5\n")
    job = _load(["--config", str(config), "--count", "3"])
    assert (job.count, job.share) == (3, None)  # the flag replaces the YAML's choice
    assert _load(["--config", str(config)]).share == 0.5
    with pytest.raises(SystemExit):
        _parser(Job).parse_args(["--count", "1", "--share", "0.5"])


def test_a_subclass_default_keeps_the_flag_and_help(capsys):
    assert {s.name: s.default for s in settings_of(LongJob)}["steps"] == 100
    assert _load([], cls=LongJob).steps == 100
    assert _load(["--steps", "5"], cls=LongJob).steps == 5
    with pytest.raises(SystemExit):
        _parser(LongJob, defaults={"root": "/srv/data"}).parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--steps STEPS steps" in text and "--no-progress no progress bar" in text
    assert "dataset root (default /srv/data)" in text  # {default}: the effective default
    assert "--internal" not in text
    assert flags_of(LongJob)["progress"] == "--no-progress"


def test_shared_fields_are_added_once():
    @dataclass
    class Other:
        steps: int = setting(1, help="other steps")
        extra_flag: bool = setting(False)

    parser = _parser(Job, Other)
    assert parser.parse_args(["--steps", "2", "--extra-flag"]).extra_flag is True


def test_command_line_sets_exactly_the_values():
    values = {"root": Path("x"), "steps": 3, "widths": [1, 2], "verbose": True, "progress": False,
              "name": None, "count": 4}  # fmt: skip
    words = command_line(Job, values)
    assert words == ["--root", "x", "--steps", "3", "--widths", "1", "2", "--verbose",
                     "--no-progress", "--count", "4"]  # fmt: skip
    assert _load(words) == Job(**values)
    assert command_line(Job, {"verbose": False, "progress": True}) == []


def test_a_field_without_a_flag_type_is_a_programming_error():
    @dataclass
    class Bad:
        table: dict = dataclasses.field(default_factory=dict)

    with pytest.raises(TypeError, match=r"Bad.table: .* has no flag"):
        settings_of(Bad)


# ------------------------------------------------------------------------------ the services


def _server(argv, env):
    from services.common.config import base_parser, config_from_args

    return config_from_args(base_parser("sampler").parse_args(argv), env=env)


def test_every_server_setting_is_a_flag_and_a_genaug_variable():
    from services.common.config import ServerConfig

    names = set()
    for s in settings_of(ServerConfig):
        names.add(s.name)
        variable = f"GENAUG_{s.name.upper()}"
        if s.switch:  # on by default: the flag turns it off, the variable either way
            assert s.default is True and s.flag == "--no-" + s.name.replace("_", "-")
            assert getattr(_server([], {}), s.name) is True
            assert getattr(_server([], {variable: "false"}), s.name) is False
            assert getattr(_server([s.flag], {variable: "true"}), s.name) is False
            continue
        assert s.flag == "--" + s.name.replace("_", "-")
        if s.name == "auth_token_file":
            continue  # the file is read at once: see the token test
        raw = {int: "7", float: "7.5", str: "x", Path: "/x"}[s.type]
        from_env = getattr(_server([], {variable: raw}), s.name)
        from_flag = getattr(_server([s.flag, raw], {variable: "0"}), s.name)
        assert from_env == from_flag == s.type(raw), s.name
    assert names == {f.name for f in dataclasses.fields(ServerConfig)} - {"service", "extra"}


def test_server_defaults_per_service_and_the_special_values(tmp_path):
    from genaug.ports import DEFAULT_PORTS

    config = _server([], {})
    assert (config.service, config.port, config.metrics_port) == (
        "sampler",
        *DEFAULT_PORTS["sampler"],
    )
    assert _server([], {"GENAUG_METRICS_PORT": "-1"}).metrics_port is None
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    assert _server(["--auth-token-file", str(token)], {"GENAUG_AUTH_TOKEN": "x"}).auth_token == (
        "s3cret"
    )
    assert _server([], {"GENAUG_AUTH_TOKEN": ""}).auth_token is None
    with pytest.raises(ConfigError, match=r"--workers expects an integer, got 'many'"):
        _server([], {"GENAUG_WORKERS": "many"})
