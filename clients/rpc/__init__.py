"""The Ctrl-GenAug client library: typed gRPC clients of the five services.

It imports only the wire contract (`genaug`), grpc and the KServe v2 stubs tritonclient ships
(shared-memory registration), never a service, model or data package, so it installs and
works without the servers. Applications (`clients.augment`, the `genaug`
CLI) and the sampler's downstream calls are built on it.
"""

from clients.rpc.channel import ChannelSettings, open_channel
from clients.rpc.codec import VaeCodecClient
from clients.rpc.encoder import ConditionEncoderClient
from clients.rpc.errors import GenAugError
from clients.rpc.filter import FilterClient
from clients.rpc.health import wait_until_serving
from clients.rpc.motion import MotionExtractorClient
from clients.rpc.sampler import SamplerClient

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
