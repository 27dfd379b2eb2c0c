"""genaug: the wire contract of Ctrl-GenAug serving.

`genaug.v1` holds the stubs generated from `protos/genaug/v1/*.proto` at build time
(`make protos`); `genaug.wire` converts between numpy arrays and those messages.
"""
