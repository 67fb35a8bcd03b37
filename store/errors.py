"""The one exception type for problems a user can fix (bad file, missing key, bad labels)."""

REASONS = (
    "missing_file", "empty_file", "not_media", "truncated", "unsupported_codec", "decode_error",
    "no_video_stream", "no_audio_stream", "duplicate_id", "bad_id", "bad_labels",
    "extractor_error", "missing_key", "ambiguous_key", "key_conflict", "missing_video", "bad_config",
    "damaged", "bad_path", "disk_full", "unsafe_file",
)
# Normal for some inputs (a wav has no frames for `faces`): recorded, never counted as failures.
NOT_APPLICABLE = frozenset({"no_video_stream", "no_audio_stream"})


class InputError(Exception):
    """Names the file, a reason code from REASONS and, where there is one, the fix."""

    def __init__(self, path, reason: str, message: str, fix: str = ""):
        self.path = str(path)
        self.reason = reason
        self.message = message
        self.fix = fix
        text = f"{self.path}: {message} [{reason}]"
        if fix:
            text += f" — fix: {fix}"
        super().__init__(text)

    @property
    def not_applicable(self) -> bool:
        return self.reason in NOT_APPLICABLE
