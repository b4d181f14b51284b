"""Deprecated: :func:`synthesize_upper` lives in :mod:`._layerwrite`, the one layer writer.

Only ``_layerfix`` still imports it from here; once it writes snapshot layers with
``Mount.export``, delete this module.
"""

from __future__ import annotations

from ._layerwrite import synthesize_upper

__all__ = ["synthesize_upper"]
