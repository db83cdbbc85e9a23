"""whisper-daemon: drop recordings into a folder, get .srt transcripts."""

__version__ = "0.1.0"
