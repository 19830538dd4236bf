"""The wire format: generated gRPC/protobuf code for the nemotron_edge.v1 API (regenerate with
`python -m edge_runtime.api.regen`; a test fails when it is stale) and `mapping`, the tables between the
proto's enums and the engine's. Imports protobuf and grpc, and of our own only the engine's plain records."""
