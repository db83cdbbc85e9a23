"""Who spoke when: speaker labels for the words of a transcript, offline, on every CPU.

voices.py embeds 1.5-s windows of the speech Silero VAD finds with CAM++ (campplus.py, weights
beside it, features from fbank.py), clustering.py groups the prints into people, attribution.py
gives each word the speaker of the prints around it and splits segments where the speaker
changes. probe.py checks in a child process that all this runs on this CPU, so a library that
cannot never takes the worker down. Like the engine, it knows nothing of the queue.
"""
