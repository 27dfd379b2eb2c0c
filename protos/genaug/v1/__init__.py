"""Generated gRPC/protobuf stubs for genaug.v1 (created by `make protos`, never edited)."""
