"""Ctrl-GenAug on the caller's side.

- `clients.rpc`: the client library (typed gRPC clients; imports only the wire contract);
- `clients.augment`, `clients.cli` and the other modules: applications built on it (the batch
  augmentation job, the `genaug` CLI, the local launcher).

The library's names are re-exported here for convenience.
"""

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
    "GenAugError",
    "MotionExtractorClient",
    "SamplerClient",
    "VaeCodecClient",
    "open_channel",
    "wait_until_serving",
]
