"""The check that no test patched ``os``: cheap while nothing is assigned, complete after.

While the plugin is in use, ``os``, ``os.path``, ``shutil``, ``builtins`` and ``io`` count
every assignment to their attributes (``_realfs.watch``), and :func:`real_filesystem` compares
the functions again only after one.  These tests patch the way suites do (``monkeypatch``,
``mock.patch``, a plain ``setattr``) after the check last found everything real, and the
plugin's block must still run against the real functions; the modules get their class back.
"""

from __future__ import annotations

import os
import shutil
import types
from collections.abc import Iterator
from unittest import mock

import pytest

from pytest_overlay import _realfs
from pytest_overlay._realfs import real_filesystem

REAL_RENAME = os.rename


def fake_rename(*args: object, **kwargs: object) -> None:
    raise AssertionError("the plugin called a patched os.rename")


@pytest.fixture
def watched() -> Iterator[None]:
    _realfs.watch()
    try:
        yield
    finally:
        _realfs.unwatch()


def test_a_monkeypatch_after_a_clean_check_is_seen(
    watched: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with real_filesystem():
        assert os.rename is REAL_RENAME  # a clean check, remembered
    monkeypatch.setattr(os, "rename", fake_rename)
    with real_filesystem():
        assert os.rename is REAL_RENAME
    assert os.rename is fake_rename  # put back after the block


def test_mock_patch_and_plain_setattr_are_seen(watched: None) -> None:
    with real_filesystem():
        pass
    with mock.patch("shutil.copyfile") as patched:
        with real_filesystem():
            assert shutil.copyfile is not patched
        assert shutil.copyfile is patched
    os.rename = fake_rename
    try:
        with real_filesystem():
            assert os.rename is REAL_RENAME
    finally:
        os.rename = REAL_RENAME


def test_the_modules_get_their_class_back() -> None:
    if type(os) is not types.ModuleType:
        pytest.skip("a session of this process is watching already")
    _realfs.watch()
    assert type(os) is not types.ModuleType
    _realfs.unwatch()
    assert {type(m) for m in (os, os.path, shutil)} == {types.ModuleType}


def test_a_module_someone_else_customised_leaves_every_check_complete(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if type(os) is not types.ModuleType:
        pytest.skip("a session of this process is watching already")

    class Customised(types.ModuleType):
        pass

    shutil.__class__ = Customised
    try:
        _realfs.watch()
        try:
            assert type(os) is types.ModuleType  # left alone: nothing is watched
            with real_filesystem():
                pass
            # Written straight into the dict: no assignment counted, and still seen.
            monkeypatch.setitem(vars(os), "rename", fake_rename)
            with real_filesystem():
                assert os.rename is REAL_RENAME
        finally:
            _realfs.unwatch()
    finally:
        shutil.__class__ = types.ModuleType
