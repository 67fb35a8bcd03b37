"""The Zarr feature store: content keys, atomic streaming writes, readers, checks and HDF5 export."""
from .errors import NOT_APPLICABLE, InputError
from .keys import canonical_json, file_sha256, make_key, sanitize_id
from .reader import Concat, error_rows, list_keys, manifest_rows, read_concat, read_video, stored_key
from .writer import FeatureStore, KeyHandle, VideoWriter

__all__ = [
    "FeatureStore", "KeyHandle", "VideoWriter", "read_video", "read_concat", "Concat", "stored_key",
    "list_keys", "manifest_rows", "error_rows", "sanitize_id", "make_key", "canonical_json",
    "file_sha256", "InputError", "NOT_APPLICABLE",
]
