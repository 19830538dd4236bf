"""The gRPC service over one engine: the servicer (protos in, engine requests and events out), the server's
lifecycle (listen, load, serve, drain), authentication, request bounds, stream pacing, metrics, systemd
notification and the service's configuration file.

Imports: `edge_runtime.engine`, `edge_runtime.bundle`, grpc and the generated `edge_runtime.api`; the
engine never imports this package.
"""
