"""Where the kept-layer store lives: pytest's cache directory, then ``d/overlay``.

This module owns that location, for the plugin (from its ``pytest.Config``) and for the
``pytest-overlay`` command (which has no pytest config and reads the project's ini itself).
pytest's cache directory is its ``cache_dir`` ini setting (default ``.pytest_cache``, or
``$TOX_ENV_DIR/.pytest_cache`` under tox), with ``~`` and ``$VARS`` expanded, relative to the
rootdir: :func:`resolve_cache_dir` repeats ``_pytest.pathlib.resolve_from_str``.

The command finds the rootdir as pytest does without arguments (:func:`find_project`): the
nearest directory upward with a pytest config file (``pytest.toml``, ``pytest.ini``, a
``pyproject.toml`` with a ``[tool.pytest...]`` table, a ``tox.ini`` with ``[pytest]``, a
``setup.cfg`` with ``[tool:pytest]``), else the nearest one that already holds a
``.pytest_cache``, else the nearest ``pyproject.toml``.  Standard library only: the command
does not import pytest.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ._keep import STORE_DIR

if sys.version_info >= (3, 11):
    import tomllib

if TYPE_CHECKING:
    import pytest

__all__ = [
    "CONFIG_NAMES",
    "Project",
    "cache_dir_of",
    "default_cache_dir",
    "find_project",
    "make_store",
    "resolve_cache_dir",
    "store_dir",
]

DEFAULT_CACHE_DIR = ".pytest_cache"
# pytest's own order (_pytest.config.findpaths.locate_config): the first that has a pytest
# section wins within a directory.
CONFIG_NAMES = (
    "pytest.toml",
    ".pytest.toml",
    "pytest.ini",
    ".pytest.ini",
    "pyproject.toml",
    "tox.ini",
    "setup.cfg",
)
_INI_SECTIONS = {".ini": "pytest", ".cfg": "tool:pytest"}


def default_cache_dir() -> str:
    """pytest's default ``cache_dir``: ``.pytest_cache``, inside ``$TOX_ENV_DIR`` under tox."""
    tox_env = os.environ.get("TOX_ENV_DIR")
    return os.path.join(tox_env, DEFAULT_CACHE_DIR) if tox_env else DEFAULT_CACHE_DIR


def resolve_cache_dir(value: str, base: Path) -> Path:
    """A ``cache_dir`` value as pytest resolves it: ``~`` and ``$VARS`` expanded, then
    relative to *base* (the rootdir; for the command's ``--cache-dir``, the current directory).
    """
    expanded = os.path.expandvars(os.path.expanduser(value))
    return Path(expanded) if os.path.isabs(expanded) else base / expanded


def store_dir(cache_dir: Path) -> Path:
    """The kept-layer store inside pytest's cache directory *cache_dir*."""
    return cache_dir / "d" / STORE_DIR


def cache_dir_of(config: pytest.Config) -> Path:
    """pytest's cache directory for *config*, even with the cache provider disabled."""
    try:
        value = str(config.getini("cache_dir"))
    except ValueError:
        # -p no:cacheprovider: the ini setting is unknown; kept layers go where it would be.
        value = default_cache_dir()
    return resolve_cache_dir(value, config.rootpath)


def make_store(config: pytest.Config) -> Path:
    """The kept-layer store of *config*'s run, made if it is missing: through pytest's cache
    where the cache provider runs, so that a cache directory made now comes with pytest's
    ``README.md``, ``.gitignore`` and ``CACHEDIR.TAG`` (pytest adds them only to a cache
    directory it makes itself, and git would list one made by hand)."""
    store = store_dir(cache_dir_of(config))
    cache = getattr(config, "cache", None)
    if cache is not None and not store.is_dir():
        # Failing, it is made below without the supporting files, or the error raised there.
        with contextlib.suppress(OSError, ValueError):
            cache.mkdir(STORE_DIR)  # cache_dir/d/overlay, the store itself
    store.mkdir(parents=True, exist_ok=True)
    return store


# --- the command's view of the project ---------------------------------------------------------


@dataclass(frozen=True)
class Project:
    """The rootdir pytest would use from some directory, and what its config says."""

    rootdir: Path
    inifile: Path | None
    """The config file pytest reads, None when the project was found by its cache."""
    cache_dir: str | None
    """Its ``cache_dir`` setting, unexpanded; None when it sets none."""

    @property
    def cache_path(self) -> Path:
        """pytest's cache directory for this project."""
        return resolve_cache_dir(self.cache_dir or default_cache_dir(), self.rootdir)

    def describe(self) -> str:
        """How the cache directory was found, for messages: ``cache_dir = X in FILE``..."""
        if self.inifile is None:
            return f"the project {self.rootdir}, found by its {DEFAULT_CACHE_DIR}"
        if self.cache_dir is not None:
            return f"cache_dir = {self.cache_dir} in {self.inifile}"
        return f"the project of {self.inifile}"


def find_project(start: Path) -> Project | None:
    """The project pytest would find from *start* (see the module docstring), or None."""
    pyproject: Path | None = None
    for directory in (start, *start.parents):
        for name in CONFIG_NAMES:
            path = directory / name
            if not path.is_file():
                continue
            if name == "pyproject.toml" and pyproject is None:
                pyproject = path
            found, cache_dir = read_config(path)
            if found:
                return Project(directory, path, cache_dir)
        if (directory / DEFAULT_CACHE_DIR).is_dir():
            return Project(directory, None, None)
    if pyproject is not None:
        # pytest 8.1+: a pyproject.toml without a pytest table still makes the rootdir.
        return Project(pyproject.parent, pyproject, None)
    return None


def read_config(path: Path) -> tuple[bool, str | None]:
    """Whether *path* is a pytest config file, and its ``cache_dir`` setting.

    A file that cannot be read or parsed counts as a config when pytest's name says so
    (``pytest.ini``), with no setting: pytest itself will say what is wrong with it.
    """
    always = path.name in ("pytest.ini", ".pytest.ini", "pytest.toml", ".pytest.toml")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return always, None
    if path.suffix == ".toml":
        tables = ("pytest",) if always else ("tool.pytest.ini_options", "tool.pytest")
        found, value = _toml_setting(text, tables, "cache_dir")
        return found or always, value
    import configparser  # here: only the command-line tool reads config files

    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text, os.fspath(path))
    except configparser.Error:
        return always, None
    section = _INI_SECTIONS.get(path.suffix, "pytest")
    if not parser.has_section(section):
        return always, None
    return True, parser.get(section, "cache_dir", fallback=None)


def _toml_setting(text: str, tables: tuple[str, ...], key: str) -> tuple[bool, str | None]:
    """Whether one of *tables* exists in the TOML *text*, and the string *key* in the first."""
    if sys.version_info >= (3, 11):
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            return False, None
        for dotted in tables:
            table: object = document
            for part in dotted.split("."):
                table = table.get(part) if isinstance(table, dict) else None
            if isinstance(table, dict):
                value = table.get(key)
                return True, value if isinstance(value, str) else None
        return False, None
    return _minimal_toml_setting(text, tables, key)


_TABLE = re.compile(r"\s*\[\s*([^\[\]]+?)\s*\]\s*(?:#.*)?$")
_STRING = re.compile(r"""\s*(?P<key>[A-Za-z0-9_-]+)\s*=\s*(?P<value>"(?:[^"\\]|\\.)*"|'[^']*')""")


def _minimal_toml_setting(text: str, tables: tuple[str, ...], key: str) -> tuple[bool, str | None]:
    # Python 3.10 has no tomllib: enough TOML for a table header and a one-line string.
    found: dict[str, str | None] = {}
    current: str | None = None
    for line in text.splitlines():
        header = _TABLE.match(line)
        if header:
            current = header.group(1).replace(" ", "").replace('"', "")
            found.setdefault(current, None)
            continue
        match = _STRING.match(line)
        if current in tables and match and match.group("key") == key:
            raw = match.group("value")
            try:
                found[current] = json.loads(raw) if raw.startswith('"') else raw[1:-1]
            except ValueError:
                continue
    for table in tables:
        if table in found:
            return True, found[table]
    return False, None
