"""`genaug conditions`: precompute the reference conditions of a prepared dataset.

Writes, per clip of `<DS>_volume/`, the motion field, trajectories and image prior files of
`services.data.conditions` (one layout for the dataset and every cache). A file that exists is
complete, so a re-run skips it (resumable). The work is done by the services over gRPC when their
addresses are given, otherwise in this process with the same code the services run.
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack, closing
from pathlib import Path

from clients.rpc.channel import open_channel
from clients.rpc.conditions import GrpcConditions
from clients.rpc.encoder import ConditionEncoderClient
from clients.rpc.motion import MotionExtractorClient
from services.data import layout
from services.data.conditions import KINDS, condition_paths, precompute
from services.data.safety import output_within

NEEDS = {"motion": ("--motion-target", "motion"), "prior": ("--encoder-target", "priors")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset-root", type=Path, required=True, help="prepared dataset root")
    parser.add_argument("--name", required=True, help="dataset name (<DS>)")
    parser.add_argument("--splits", nargs="+", default=["train", "test"], choices=layout.SPLITS)
    parser.add_argument(
        "--what",
        nargs="+",
        default=list(KINDS),
        choices=KINDS,
        help="which conditions (default: motion and prior)",
    )
    parser.add_argument(
        "--method",
        default="codec",
        choices=["codec", "optical_flow"],
        help="motion method (default: codec motion vectors)",
    )
    parser.add_argument("--motion-target", help="motion extractor address (else in-process)")
    parser.add_argument("--encoder-target", help="condition encoder address (else in-process)")
    parser.add_argument(
        "--image-encoder",
        default="litemedsam",
        choices=["litemedsam", "medsam_vit_b"],
        help="in-process prior encoder",
    )
    parser.add_argument("--medsam-checkpoint", type=Path, help="medsam_vit_b.pth (ViT-B only)")
    parser.add_argument("--workers", type=int, default=1, help="clips in parallel (default 1)")
    parser.add_argument("--limit", type=int, help="only the first N clips")
    parser.add_argument("--overwrite", action="store_true", help="recompute existing files")


def run(args: argparse.Namespace) -> int:
    with ExitStack() as channels:
        if args.motion_target or args.encoder_target:
            source = _grpc_source(args, channels)
        else:
            from services.models.conditions import InProcessConditions

            source = InProcessConditions(args.method, args.image_encoder, args.medsam_checkpoint)
        # A link planted in the dataset root must not carry the condition files outside it.
        for path in condition_paths(args.dataset_root, args.name, "clip.avi").files():
            output_within(args.dataset_root, path.parent, "--dataset-root")
        counts = precompute(
            args.dataset_root,
            args.name,
            args.splits,
            args.what,
            source,
            args.workers,
            args.overwrite,
            args.limit,
        )
    print(f"{args.name}: {counts['computed']} clips computed, {counts['skipped']} already done")
    return 0


def _grpc_source(args: argparse.Namespace, channels: ExitStack) -> GrpcConditions:
    """The services of the given addresses; each asked-for kind needs its service."""
    targets = {"motion": args.motion_target, "prior": args.encoder_target}
    for kind in args.what:
        if not targets[kind]:
            flag, what = NEEDS[kind]
            raise ValueError(f"{flag} is needed to compute {what} over gRPC")

    def client(make, target):
        return make(channels.enter_context(closing(open_channel(target)))) if target else None

    return GrpcConditions(
        client(ConditionEncoderClient, args.encoder_target),
        client(MotionExtractorClient, args.motion_target),
        args.method,
    )
