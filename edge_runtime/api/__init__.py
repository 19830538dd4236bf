"""Generated gRPC/protobuf code for the nemotron_edge.v1 API (regenerate with `python -m edge_runtime.api.regen`)."""
