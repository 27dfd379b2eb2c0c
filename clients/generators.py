"""`genaug generators`: the generators a sampler serves, as its ListModels lists them (name,
version, default, classes in id order, domain, training data, measured figures)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from clients.api import GenAug, Generator
from clients.rpc.channel import ChannelSettings
from genaug.ports import DEFAULT_PORTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    port = DEFAULT_PORTS["sampler"][0]
    parser.add_argument(
        "--sampler", default=f"127.0.0.1:{port}", help="sampler address (default %(default)s)"
    )
    parser.add_argument("--json", action="store_true", help="print the cards as JSON")
    parser.add_argument(
        "--auth-token-file", type=Path, help="bearer token file (default: $GENAUG_AUTH_TOKEN)"
    )
    parser.add_argument("--tls-ca", type=Path, help="PEM CA of the sampler's certificate")
    parser.add_argument("--tls-cert", type=Path, help="PEM client certificate (mutual TLS)")
    parser.add_argument("--tls-key", type=Path, help="PEM client key (mutual TLS)")


def describe(generator: Generator) -> list[str]:
    """A generator's lines of the listing."""
    card = generator.card
    figures = card.get("figures") or {}
    shown = {k: figures[k] for k in ("class_fidelity", "vae_psnr_db") if k in figures}
    domain = (
        f"{generator.num_frames} x {generator.height} x {generator.width}"
        if generator.num_frames
        else f"{generator.height} x {generator.width}"
    )
    return [
        f"{generator.name} (version {generator.version})"
        + (", the default" if generator.is_default else ""),
        f"  classes (id order): {', '.join(generator.class_names) or 'unknown'}",
        f"  domain: {generator.modality or 'modality unknown or mixed'}, frames x H x W {domain}",
        f"  trained on: {generator.dataset_name or 'unknown'}"
        + (
            f" (sha256 {card['dataset_fingerprint'][:12]})"
            if card.get("dataset_fingerprint")
            else ""
        ),
        "  figures: " + (", ".join(f"{k} {v}" for k, v in shown.items()) or "none on the card"),
    ]


def run(args: argparse.Namespace) -> int:
    token = (
        args.auth_token_file.read_text().strip()
        if args.auth_token_file
        else os.environ.get("GENAUG_AUTH_TOKEN") or None
    )
    settings = ChannelSettings(
        token=token, ca_cert=args.tls_ca, client_cert=args.tls_cert, client_key=args.tls_key
    )
    with GenAug(args.sampler, settings=settings) as client:
        generators = client.generators()
    if args.json:
        print(json.dumps([g.card for g in generators], indent=2))
    else:
        for generator in generators:
            print("\n".join(describe(generator)))
    return 0
