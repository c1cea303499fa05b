"""Importing ``package.module:factory``: the folders a run searches, and what it says when a module is missing."""

from __future__ import annotations

import sys

import pytest

from edgeslim.errors import UserError
from edgeslim.models.zoo import factory_search_path, import_object


def test_search_folders_come_first_in_order_and_leave_sys_path_as_it_was(tmp_path):
    first, second = tmp_path / "configs", tmp_path / "cwd"
    first.mkdir()
    second.mkdir()
    (first / "zoo_probe_mod.py").write_text("where = 'config folder'\n")
    (second / "zoo_probe_mod.py").write_text("where = 'current folder'\n")
    before = list(sys.path)
    try:
        with factory_search_path([first, second, first]) as added:  # a repeated folder is searched once
            assert added == [first.resolve(), second.resolve()]
            assert sys.path[:2] == [str(first.resolve()), str(second.resolve())]
            assert import_object("zoo_probe_mod:where", "model.name") == "config folder"
        assert sys.path == before
    finally:
        sys.modules.pop("zoo_probe_mod", None)


def test_a_missing_module_names_the_key_the_module_and_the_folders_searched(tmp_path):
    with factory_search_path([tmp_path]), pytest.raises(UserError) as err:
        import_object("zoo_absent_pkg.models:net", "data.name")
    assert str(err.value) == (
        f"data.name: cannot import module 'zoo_absent_pkg.models': no module named 'zoo_absent_pkg' "
        f"in {tmp_path.resolve()} or the installed packages"
    )
    with pytest.raises(UserError, match=r"no module named 'zoo_absent_pkg' on the Python import path \(run from"):
        import_object("zoo_absent_pkg:net", "model.name")  # outside the CLI: no folders were added


def test_a_module_failing_on_its_own_missing_import_is_named_as_such(tmp_path):
    (tmp_path / "zoo_needs_dep.py").write_text("import zoo_not_installed_dep\n")
    try:
        with factory_search_path([tmp_path]), pytest.raises(UserError) as err:
            import_object("zoo_needs_dep:net", "model.name")
    finally:
        sys.modules.pop("zoo_needs_dep", None)
    assert str(err.value) == (
        "model.name: cannot import module 'zoo_needs_dep': ModuleNotFoundError: No module named 'zoo_not_installed_dep'"
    )
