"""Allowed roots: every user path resolves inside a root or is refused with a message saying what to do."""

import os

import pytest

from atelier.core.paths import (ROOTS_ENV, PathRefused, Root, check_relative, list_folders, natural_key,
                                resolve_folder, roots_from_env, safe_name)


@pytest.fixture
def roots(tmp_path):
    inp, data, outside = tmp_path / "input", tmp_path / "datasets", tmp_path / "outside"
    for d in (inp / "korra" / "10_korra", data / "portraits", outside / "secret"):
        d.mkdir(parents=True)
    return [Root("input", inp), Root("datasets", data)], outside


@pytest.mark.parametrize("bad, words", [
    ("../etc", "'..'"),
    ("korra/../../x", "'..'"),
    ("/etc/passwd", "absolute"),
    ("\\\\server\\share\\set", "UNC"),
    ("//server/share", "UNC"),
    ("C:\\Users\\me", "drive"),
    ("c:/x", "drive"),
    ("a\x00b", "NUL"),
])
def test_check_relative_refuses_escapes(bad, words):
    with pytest.raises(PathRefused, match=words):
        check_relative(bad)


def test_check_relative_normalises():
    assert check_relative(" korra\\10_korra/./ ") == "korra/10_korra"
    assert check_relative("") == ""


def test_resolve_folder_inside_roots(roots):
    (inp, data), _ = roots
    path, root = resolve_folder("input/korra/10_korra", [inp, data])
    assert path == (inp.path / "korra" / "10_korra").resolve() and root == inp
    assert resolve_folder("datasets", [inp, data])[0] == data.path.resolve()


def test_unknown_root_lists_allowed_roots_and_how_to_add(roots):
    rs, _ = roots
    with pytest.raises(PathRefused) as e:
        resolve_folder("home/me/pics", rs)
    msg = str(e.value)
    assert "input, datasets" in msg and "extra_model_paths.yaml" in msg and ROOTS_ENV in msg
    assert str(rs[0].path) not in msg  # a network client is not told where the roots are on the server's disk


def test_missing_folder_message(roots):
    rs, _ = roots
    with pytest.raises(PathRefused, match="does not exist.*korra/nope"):
        resolve_folder("input/korra/nope", rs)


def test_symlink_escaping_root_is_refused(roots):
    rs, outside = roots
    os.symlink(outside / "secret", rs[0].path / "escape")
    with pytest.raises(PathRefused, match="outside its root"):
        resolve_folder("input/escape", rs)
    assert "input/escape" not in list_folders(rs)


def test_symlink_inside_root_is_followed(roots):
    rs, _ = roots
    os.symlink(rs[0].path / "korra", rs[0].path / "alias")
    assert resolve_folder("input/alias/10_korra", rs)[0] == (rs[0].path / "korra" / "10_korra").resolve()


def test_list_folders(roots):
    rs, _ = roots
    assert list_folders(rs) == ["datasets/portraits", "input/korra", "input/korra/10_korra"]
    assert list_folders(rs, depth=1) == ["datasets/portraits", "input/korra"]


def test_roots_from_env(tmp_path):
    env = {ROOTS_ENV: f"{tmp_path}/a{os.pathsep}{tmp_path}/b"}
    assert [r.path.name for r in roots_from_env(env)] == ["a", "b"]
    assert roots_from_env({}) == []


@pytest.mark.parametrize("bad", ["", "..", "a/b", "a\\b", "x:y", "tab\tname"])
def test_safe_name_refuses(bad):
    with pytest.raises(PathRefused):
        safe_name(bad)


def test_natural_sort():
    assert sorted(["epoch-10", "epoch-2", "epoch-1"], key=natural_key) == ["epoch-1", "epoch-2", "epoch-10"]
