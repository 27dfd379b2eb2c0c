"""`genaug augment`: build an augmented dataset on demand through the services.

Reads a prepared dataset (seed layout, training split only), plans N generations per class over
its reference clips as the reference's `generate.py` does, generates them across the sampler
replicas (bounded concurrency, retries with the same request id), filters the pool through the
filter service, and writes the kept clips in the seed layout under `--out` with a report.
Exactly-once and resumable: see `clients.augment.manifest`.

    genaug augment --dataset-root data --name Phantom --out runs/aug --per-class 8 \\
        --sampler 10.0.0.5:50053 10.0.0.6:50053 --filter 10.0.0.7:50054 --steps 25 --guidance 3
"""

from __future__ import annotations

import argparse
import logging

from clients.augment.options import AugmentOptions, add_arguments, resolve
from clients.augment.replicas import JobFailed

__all__ = ["AugmentOptions", "add_arguments", "run", "run_options"]

logger = logging.getLogger(__name__)


def run_options(options: AugmentOptions, generator=None):
    """Run one shard of a job; returns its `JobResult`. `generator` is the checked generator
    (`preflight.check_generator`), whose class ids the job then uses."""
    from clients.augment.job import run_job

    return run_job(options, generator=generator)


def _flags() -> dict[str, str]:
    from clients.cli import option_flags

    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return option_flags(parser)


def run(args: argparse.Namespace) -> int:
    from clients.augment import preflight
    from clients.augment.options import channel_settings
    from clients.cli import user_message
    from genaug.errors import GenaugError

    try:
        options = resolve(args)
        preflight.check_output(options)
    except (ValueError, OSError) as error:
        print(f"genaug augment: {user_message(error, _flags())}")
        return 2
    try:  # seconds, not the minutes of the channels' retries, to learn a target is wrong
        preflight.check_targets(options, channel_settings(options))
    except GenaugError as error:
        print(f"genaug augment: {error}")
        return 1
    try:  # the dataset's classes and domain against the generator's card, before any work
        generator = preflight.check_generator(options, channel_settings(options))
    except preflight.Refused as error:
        print(f"genaug augment: {error}")
        return 2
    except (ValueError, OSError) as error:
        print(f"genaug augment: {user_message(error, _flags())}")
        return 2
    except GenaugError as error:
        print(f"genaug augment: {error}")
        return 1
    from clients.augment.report import summary_lines

    try:
        result = run_options(options, generator)
    except JobFailed as error:
        print(f"genaug augment: stopped: {error}")
        print("finished work is kept; run the same command again to continue")
        return 1
    except (ValueError, GenaugError) as error:  # bad options or dataset: nothing was done
        print(f"genaug augment: {error}")
        return 2
    if result.waiting_for:
        print(
            f"genaug augment: shard {options.shard_index}/{options.shard_count} generated its "
            f"clips; {result.waiting_for} clips of other shards are still to come, and the shard "
            "that completes the pool filters the whole job and writes the kept clips"
        )
        return 0
    for line in summary_lines(result):
        print(line)
    print(f"  output: {options.out} ({result.metadata_records} clips in the train metadata)")
    if result.report_path is not None:
        print(f"  report: {result.report_path}")
    return 0
