"""What the backends raise."""


class SchemaMismatch(Exception):
    """A database of another schema version than this whisper-daemon's; the message says what to do."""
