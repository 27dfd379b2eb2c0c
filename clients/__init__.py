"""Python client library of Ctrl-GenAug serving, and the `genaug` CLI.

Imports only the generated stubs and the wire contract (`genaug`), never a service package.
"""

from clients.channel import ChannelSettings, open_channel
from clients.codec import VaeCodecClient
from clients.errors import GenAugError
from clients.health import wait_until_serving

__all__ = ["ChannelSettings", "GenAugError", "VaeCodecClient", "open_channel", "wait_until_serving"]
