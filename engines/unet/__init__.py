"""Diffusion-model engines: export to ONNX, ONNX Runtime / TensorRT runtimes, INT8 quantization,
the artifact store, and the build chain with its policy (which backend, which graph, which key)."""
