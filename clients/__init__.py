"""Python client library of Ctrl-GenAug serving, and the `genaug` CLI.

Imports only the generated stubs and the wire contract (`genaug`), never a service package.
"""

from clients.channel import ChannelSettings, open_channel
from clients.codec import VaeCodecClient
from clients.encoder import ConditionEncoderClient
from clients.errors import GenAugError
from clients.filter import FilterClient
from clients.health import wait_until_serving
from clients.motion import MotionExtractorClient
from clients.sampler import SamplerClient

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
