"""The words the options and the marker accept: one home, standard library only.

Both the thin plugin module (imported in every pytest run) and the machinery behind it read
these, so they live apart from anything that is costly to import.
"""

from __future__ import annotations

BACKEND_CHOICES = ("auto", "kernel", "fuse", "copy")
KEEP_CHOICES = ("failed", "all", "none")
USERNS_CHOICES = ("lazy", "early")
MARKER_ARGUMENTS = ("lowers", "backend", "layers")
