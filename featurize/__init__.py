"""Videos in, arrays out: decoding, the extractor registry and the extractors.

Importing the package registers every extractor (the modules import nothing heavy at
import time; models load when an extractor is built).
"""
import warnings

# mediapipe 0.10.14 calls a protobuf 4.25 API that warns once per graph output, i.e. per
# video in every worker; it is harmless for this pinned pair and drowns the progress bar.
warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype\(\) is deprecated",
                        category=UserWarning)

from featurize import audio, backbone, faces, fer, mesh, opensmile, prosody  # noqa: E402,F401  (register extractors)
from featurize.registry import get, get_cached, names, parse_config, resolve_key  # noqa: E402,F401
