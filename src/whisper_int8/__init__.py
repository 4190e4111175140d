"""whisper_int8: fuse, calibrate, quantize and evaluate OpenAI Whisper as INT8, with DVC and MLflow."""

from . import lazy_numba

__version__ = "0.1.0"

lazy_numba.install()  # before anything imports whisper: its numba (56 MB) only serves word timestamps
