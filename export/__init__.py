"""nemotron-edge workstation exporter: reference Nemotron-H model, checkpoint I/O, ONNX bundle export. Needs torch."""
