"""Ctrl-GenAug on the caller's side.

- `clients.rpc`: the client library (typed gRPC clients; imports only the wire contract);
- `clients.api`: the Python API for platforms that do not want a CLI (`GenAug`: list the
  generators, generate clips from a reference clip, run the batch job);
- `clients.augment`, `clients.cli` and the other modules: applications built on it (the batch
  augmentation job, the `genaug` CLI, the local launcher).

The library's names and the API are re-exported here for convenience.
"""

from clients.api import GenAug, Generator
from clients.rpc import (
    ChannelSettings,
    ConditionEncoderClient,
    FilterClient,
    GenAugError,
    MotionExtractorClient,
    SamplerClient,
    VaeCodecClient,
    open_channel,
    wait_until_serving,
)

__all__ = [
    "ChannelSettings",
    "ConditionEncoderClient",
    "FilterClient",
    "GenAug",
    "GenAugError",
    "Generator",
    "MotionExtractorClient",
    "SamplerClient",
    "VaeCodecClient",
    "open_channel",
    "wait_until_serving",
]
