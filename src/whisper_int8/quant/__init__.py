"""INT8 quantization of a fused Whisper: config validation, CPU/CUDA backends, save and load."""
