"""What the backends raise and how their failures are told apart."""


class SchemaMismatch(Exception):
    """A database of another schema version than this whisper-daemon's; the message says what to do."""
