"""Sprint's algorithms and runtimes: pure torch / numpy / onnxruntime / tensorrt, no ComfyUI."""
