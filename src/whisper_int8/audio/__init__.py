"""Build the multilingual calibration and evaluation corpus (the fetch_audio stage).

One module per source kind (``asterisk``, ``kokoro``, ``local``, ``hf``), plus ``wavio`` (decode,
convert and check audio), ``manifest`` (the on-disk format) and ``build`` (selection and splitting).
"""

from .errors import AudioInputError, ErrorPolicy
from .manifest import MANIFEST, Clip, first_per_language, read_manifest

__all__ = ["MANIFEST", "AudioInputError", "Clip", "ErrorPolicy", "first_per_language", "read_manifest"]
