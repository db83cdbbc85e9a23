"""The speech engine: audio in, timed words out.

PyAV decodes the file (audio.py), Silero VAD finds the speech (vad.py), and Whisper's seek loop
(transcribe.py) runs our decoder (decoder.py) and word timing (timing.py) window by window on a
model loaded once (weights.py) in the format this CPU runs fastest (precision.py). It knows
nothing of the queue, the processes or the output files (import-linter checks it), so it is
testable alone. Importing this package loads nothing: torch comes with the modules that need it.
"""
