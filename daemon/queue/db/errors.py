"""What the backends raise."""


class SchemaMismatch(Exception):
    """A database of another schema version than this whisper-daemon's; the message says what to do."""


class LockLost(Exception):
    """This process no longer holds a lock it took for its life (db.try_lock): another process ended
    its session and holds it now, or the database went away."""
