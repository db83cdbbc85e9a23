"""The user's folders: which files of the inbox are recordings (inputs.py), the settings files in
its folders (folders.py), and where transcripts go in the outbox and how they are written
(outputs.py). No torch and no database here."""
