"""`genaug`: one console script whose subcommands live in their own modules.

Each entry names a module exposing `add_arguments(parser)` and `run(args) -> int`; modules are
imported only when their subcommand runs, so `genaug --help` stays fast and a client-only
install never imports the in-process ML code behind `prepare`, `train` or `export-onnx`.

Errors: the data, model and client layers raise errors that name their own parameters
(`InvalidArgument("ct_window", ...)`, messages that mention `` `min_frames` ``); this module
turns them into the subcommand's flag names (`--ct-window: ...`) and prints one line, never a
traceback, for anything the user can act on. Exit codes (every subcommand):

    0    done
    1    stopped by an operational failure (a service unreachable or failing, a disk error);
         finished work is kept: run the same command again to continue
    2    bad input: a flag, a file, a dataset (nothing was changed)
    130  interrupted (Ctrl-C); run the same command again to continue
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_CODES = (
    "exit codes: 0 done; 1 stopped by a failing service or disk (finished work is kept: re-run "
    "to continue); 2 bad input (nothing changed); 130 interrupted (re-run to continue)"
)

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("clients.serve", "start the services as local processes on loopback"),
    "demo": ("clients.demo", "run the embedded main job on the bundled models and data"),
    "prepare": ("clients.prepare", "ingest and preprocess medical sequences"),
    "conditions": ("clients.conditions", "precompute motion fields, trajectories and priors"),
    "augment": ("clients.augment", "build an augmented dataset on demand"),
    "generators": ("clients.generators", "list the generators a sampler serves, with their cards"),
    "train": ("services.models.training.cli", "train the VAE, LDM, sequence LDM or classifier"),
    "export-onnx": ("services.models.onnx_export", "export the VAE and prior encoder to ONNX"),
    "study": ("clients.study", "measure the augmentation gain, with confidence intervals"),
}

_BACKTICKED = re.compile(r"`([a-z][a-z0-9_]*)`")


def option_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Parameter (argparse dest) -> its long flag, e.g. `dataset_root` -> `--dataset-root`."""
    flags = {}
    for action in parser._actions:  # argparse has no public accessor for its actions
        long = [s for s in action.option_strings if s.startswith("--")]
        if long and action.dest not in flags:
            flags[action.dest] = long[0]
    return flags


def user_message(error: BaseException, flags: dict[str, str]) -> str:
    """One line for the user: parameter names (the field, and `names` in backticks) as flags."""
    text = str(error)
    field = getattr(error, "field", None)
    if field is None:  # NotFound and others: "field: message" by convention
        head, sep, _ = text.partition(": ")
        field = head if sep and head in flags else None
    if field is not None and text.startswith(f"{field}: "):
        text = f"{flags.get(field, field)}: {text[len(field) + 2 :]}"
    return _BACKTICKED.sub(lambda m: flags.get(m.group(1), m.group(1)), text)


def _service_errors() -> tuple[type[BaseException], ...]:
    """Errors of a failing service call (imported only when one is being handled)."""
    try:
        import grpc

        from clients.rpc.errors import GenAugError
    except ImportError:  # pragma: no cover - grpc is a dependency of every install
        return ()
    return (GenAugError, grpc.RpcError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genaug", description=__doc__.splitlines()[0], epilog=EXIT_CODES
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_module, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def run_subcommand(command: str, rest: list[str]) -> int:
    """Parse the subcommand's flags and run it, turning user errors into one line and an
    exit code (see the module docstring)."""
    from genaug.errors import GenaugError

    module_name, help_text = SUBCOMMANDS[command]
    module = importlib.import_module(module_name)
    sub_parser = argparse.ArgumentParser(
        prog=f"genaug {command}", description=help_text, epilog=EXIT_CODES
    )
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(rest)
    flags = option_flags(sub_parser)
    prefix = f"genaug {command}"
    try:
        return int(module.run(args) or EXIT_OK)
    except KeyboardInterrupt:
        print(f"\n{prefix}: interrupted; re-run to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (GenaugError, ValueError, LookupError) as error:
        logger.debug("%s failed", command, exc_info=True)  # --log-level DEBUG: the traceback
        print(f"{prefix}: {user_message(error, flags)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except _service_errors() as error:
        print(f"{prefix}: a service call failed: {error}", file=sys.stderr)
        print("finished work is kept; run the same command again to continue", file=sys.stderr)
        return EXIT_FAILED
    except OSError as error:
        print(f"{prefix}: {error}", file=sys.stderr)
        return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Parse only up to the subcommand, then let the subcommand's module own its flags.
    head, rest = parser.parse_known_args(argv)
    logging.basicConfig(
        level=head.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return run_subcommand(head.command, rest)
    except KeyboardInterrupt:  # during the (lazy) import of a heavy subcommand
        print(f"\ngenaug {head.command}: interrupted; re-run to continue", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
