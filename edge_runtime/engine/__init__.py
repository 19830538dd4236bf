"""Generation in process: requests in, events out. The line a request travels: `chat` (template, tokens,
budgets) -> `engine` (admission, the step loop) -> `scheduler` -> `runner` (ONNX Runtime, `providers`,
`state_pool`) -> `sampler` (its stages: thinking control, penalties, truncation, the draw) -> `output`
(detokenizer, channels, stop strings, tool calls) -> the caller's events (`records`).

Imports: `edge_runtime.bundle`, numpy, onnxruntime, tokenizers; never `edge_runtime.service`, gRPC or torch.
"""
