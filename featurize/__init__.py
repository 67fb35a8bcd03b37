"""Videos in, arrays out: decoding, the extractor registry and the extractors.

Importing the package registers every extractor (the modules import nothing heavy at
import time; models load when an extractor is built).
"""
from featurize import audio, backbone, faces, fer, mesh  # noqa: F401  (register extractors)
from featurize.registry import get, get_cached, key_for, names, parse_config  # noqa: F401
