"""The bundle and what it says about the model: the folder's reader and its checks (every path inside the
folder, every offset and size checked), signatures, the model's configuration and state layout, the memory
plan, and the chat template the bundle carries.

Imports: the standard library, numpy, onnxruntime-free parsing and `cryptography`; never the engine, the
service, gRPC or torch.
"""
