"""`genaug`: one console script whose subcommands live in their own modules.

Each entry names a module exposing `add_arguments(parser)` and `run(args) -> int`; modules are
imported only when their subcommand runs, so `genaug --help` stays fast and a client-only
install never imports the in-process ML code behind `prepare`, `train` or `export-onnx`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("clients.serve", "start the services as local processes on loopback"),
    "demo": ("clients.demo", "run the embedded main job on the bundled models and data"),
    "prepare": ("services.data.prepare", "ingest and preprocess medical sequences"),
    "conditions": ("clients.conditions", "precompute motion fields, trajectories and priors"),
    "augment": ("clients.augment", "build an augmented dataset on demand"),
    "train": ("services.models.training.cli", "train the VAE, LDM, sequence LDM or classifier"),
    "export-onnx": ("services.models.onnx_export", "export the VAE and prior encoder to ONNX"),
    "study": ("clients.study", "measure the augmentation gain, with confidence intervals"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genaug", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_module, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Parse only up to the subcommand, then let the subcommand's module own its flags.
    head, rest = parser.parse_known_args(argv)
    module_name, help_text = SUBCOMMANDS[head.command]
    module = importlib.import_module(module_name)
    sub_parser = argparse.ArgumentParser(prog=f"genaug {head.command}", description=help_text)
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(rest)
    logging.basicConfig(
        level=head.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
