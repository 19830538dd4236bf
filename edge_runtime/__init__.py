"""nemotron-edge device runtime: loads an exported bundle and generates on ONNX Runtime. Never imports torch."""
