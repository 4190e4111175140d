"""whisper_int8: fuse, calibrate, quantize and evaluate OpenAI Whisper as INT8, with DVC and MLflow."""

__version__ = "0.1.0"
