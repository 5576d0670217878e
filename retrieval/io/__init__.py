"""Everything that touches what lies outside the process: a user's files and the folders that hold them (files.py: the
walk; sources.py: local folders and pyarrow file systems such as s3://), decoding any image into the model's input
(images.py; camera RAW through LibRaw: raw.py), the changed copies of an image that measurements make (changes.py),
writing our own files so that a crash leaves old or new and never a part (durable.py), and the facts about the machine
and its packages (system.py).

It imports nothing of the package but `errors`: every other room reads and writes through it.
"""
