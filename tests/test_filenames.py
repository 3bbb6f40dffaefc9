"""Names of received files: hostile paths are refused with BadFileName, ordinary names pass unchanged,
and what a sender offers (sender_name, numbered) is always accepted."""

import ntpath
import os

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from p2pd.core.filenames import (
    BadFileName, check_relpath, is_hidden_or_unsafe, numbered, safe_component, sender_name,
)
from p2pd.errors import BadRequest

HOSTILE = [
    "../x", "/etc/x", "a/../../x", "C:\\x", "x\x00y", ".", "..", "", "a" * 300,
    ".ssh/authorized_keys", ".SSH/authorized_keys", "a\u2215b", "\x1b[1A\r", "a\nb", "x\u202eb",
    "x\u0085", "x\u2028",
]

MORE_HOSTILE = [
    "C:x", "0:", "é:x", "\\\\server\\share\\x", "a\\b", "a//b", "a/", "dir/./x", "x/..",
    ".bashrc", "dir/.git/config",
    "x\x7f", "x\x9b", "x\u2029", "x\u200e", "x\u200f", "x\u202a", "x\u2066", "x\u2069", "x\u061c",
    "a\u2044b", "a\uff0fb", "a\u29f8b", "a\uff3cb", "a\ufe68b", "\u2024", "\uff0e\uff0e", "a\u2024b",
    "\u2025", "\ufe52ssh", "c\u2100d", "name.", "name ", "dir./x", "   ", "\u3000", "x\ud800",
    "/".join("a" * 32) + "/b", "/".join(["a" * 200] * 21), "é" * 128,
]

ACCEPTED = [
    "doc..pdf", "a.b.c", "résumé.pdf", "گزارش.pdf", "😀.png", "👨‍👩‍👧 family.jpg", "dir/sub/file.txt", "x",
    " leading space", "notes:v2:c", "ab:c", "con.txt", "½.txt", "a…b", "/".join("a" * 32), "é" * 127 + "x",
]

# Arbitrary text, surrogates included, biased towards the characters the rules are about.
TRICKY = ("./\\: \x00\n\x1b\x7f\x85\u2028\u202e\u2066"
          "\u2215\u2044\uff0f\uff0e\u2024\u2025\ufe52\u2100\ud800éا😀")
ANY_CHAR = st.characters(blacklist_categories=()) | st.sampled_from(TRICKY)
ANY_TEXT = st.text(ANY_CHAR, max_size=300)


@pytest.mark.parametrize("path", HOSTILE + MORE_HOSTILE)
def test_hostile_paths_are_refused(path):
    with pytest.raises(BadFileName):
        check_relpath(path)


@pytest.mark.parametrize("path", ACCEPTED)
def test_ordinary_paths_are_accepted_unchanged(path):
    assert "/".join(check_relpath(path)) == path
    assert check_relpath(path) == tuple(path.split("/"))


@pytest.mark.parametrize("value", [None, b"x", 3, ["x"]])
def test_non_strings_are_refused(value):
    with pytest.raises(BadFileName):
        check_relpath(value)


def test_error_is_a_bad_request_with_code_and_escaped_message():
    with pytest.raises(BadFileName) as info:
        check_relpath("../x")
    assert isinstance(info.value, BadRequest)
    assert info.value.code == "bad_name" and info.value.status == 400
    assert info.value.message == "refused file name '../x': '..' is not allowed"
    assert info.value.to_json()["error"] == "bad_name"
    for hostile in ["\x1b[1A\r", "x\u202eb", "x\ud800", "a\nb", "x\u2028"]:
        with pytest.raises(BadFileName) as info:
            check_relpath(hostile)
        assert info.value.message.isprintable()
        assert not any(ch in info.value.message for ch in "\x1b\r\n\u202e\u2028\ud800")


def test_long_names_are_shortened_in_the_message():
    with pytest.raises(BadFileName) as info:
        check_relpath("a" * 5000)
    assert len(info.value.message) < 200


@pytest.mark.parametrize("name, expected", [
    ("CON", "_CON"), ("con", "_con"), ("con.txt", "_con.txt"), ("Com1", "_Com1"),
    ("LPT9.tar.gz", "_LPT9.tar.gz"),
    ("aux.c", "_aux.c"), ("NUL", "_NUL"), ("prn.pdf", "_prn.pdf"), ("COM\u00b9", "_COM\u00b9"),
    ("console", "console"), ("com10", "com10"), ("com0", "com0"), ("lpt", "lpt"), ("xcon", "xcon"),
    ("report.pdf", "report.pdf"),
    # issue 13, bug 9: a leading '-' would be an option to `rm *` or `tar cf x *` in the inbox (CWE-88)
    ("-rf", "_-rf"), ("--help.txt", "_--help.txt"), ("a-b", "a-b"), ("-" + "x" * 254, "_-" + "x" * 253),
])
def test_safe_component(name, expected):
    assert safe_component(name) == expected


@pytest.mark.parametrize("name, expected", [
    (".bashrc", "bashrc"), ("...x", "x"), ("x. . ", "x"), ("a\\b", "a_b"), ("a/b", "a_b"),
    ("a\x1bb", "a_b"), ("x\u202egpj.exe", "x_gpj.exe"), ("a\u2215b", "a_b"), ("x\ud800", "x_"),
    ("C:x", "C_x"), ("1:2", "1_2"), ("notes:v2.txt", "notes:v2.txt"),
    ("", "file"), (".", "file"), ("..", "file"),
    ("   ", "file"), ("\u2025x", "x"), ("résumé.pdf", "résumé.pdf"), ("doc..pdf", "doc..pdf"),
])
def test_sender_name(name, expected):
    assert sender_name(name) == expected


def test_sender_name_truncates_keeping_the_extension():
    name = sender_name("é" * 300 + ".pdf")
    assert name.endswith(".pdf") and len(name.encode()) <= 255
    assert name == "é" * 125 + ".pdf"  # 125 * 2 + 4 bytes: never half a character
    long_ext = sender_name("x." + "y" * 300)
    assert len(long_ext.encode()) == 255 and long_ext.startswith("x.y")


@pytest.mark.parametrize("name, n, expected", [
    ("report.pdf", 1, "report (1).pdf"), ("archive.tar.gz", 2, "archive (2).tar.gz"),
    ("a.TAR.ZST", 1, "a (1).TAR.ZST"), ("b.tar.xz", 4, "b (4).tar.xz"), ("c.tar.bz2", 5, "c (5).tar.bz2"),
    ("README", 3, "README (3)"), ("x", 1, "x (1)"), ("doc..pdf", 1, "doc. (1).pdf"),
    ("dir/sub/file.txt", 2, "dir/sub/file (2).txt"), ("v1.2/notes", 1, "v1.2/notes (1)"),
])
def test_numbered(name, n, expected):
    assert numbered(name, n) == expected


def test_numbered_shortens_the_stem_not_the_extension():
    name = numbered("é" * 125 + ".pdf", 12)
    assert name.endswith(" (12).pdf") and len(name.encode()) <= 255
    with pytest.raises(ValueError):
        numbered("x", 0)


@pytest.mark.parametrize("name, hidden", [
    (".git", True), (".DS_Store", True), ("a\nb", True), ("a/b", True), ("..", True), ("x.", True),
    ("", True), ("a\ud800", True), ("file.txt", False), ("résumé.pdf", False), ("con", False),
])
def test_is_hidden_or_unsafe(name, hidden):
    assert is_hidden_or_unsafe(name) is hidden


def _accepted(path):
    try:
        return check_relpath(path)
    except BadFileName:
        return None


@given(ANY_TEXT)
@example("a/../b")
def test_check_relpath_only_ever_raises_bad_file_name(path):
    _accepted(path)


@given(st.lists(ANY_TEXT, min_size=1, max_size=4).map("/".join))
def test_accepted_paths_stay_inside_the_base_dir(path):
    parts = _accepted(path)
    if parts is None:
        return
    assert not any(p.startswith(".") for p in parts)
    base = "/srv/inbox"
    target = os.path.normpath(os.path.join(base, *parts))
    assert os.path.commonpath([base, target]) == base and target != base
    assert not any(p.startswith(".") for p in os.path.relpath(target, base).split(os.sep))
    win_base = "C:\\inbox"
    win_target = ntpath.normpath(ntpath.join(win_base, *map(safe_component, parts)))
    assert ntpath.commonpath([win_base, win_target]) == win_base and win_target != win_base


@given(ANY_TEXT)
@example("\ud800\u2025..")
@example("C:" + "x" * 300)
def test_sender_name_is_always_accepted(name):
    offered = sender_name(name)
    assert check_relpath(offered) == (offered,)
    assert not is_hidden_or_unsafe(offered)


@given(ANY_TEXT, st.integers(min_value=1, max_value=10**6))
def test_numbered_names_are_accepted(name, n):
    if _accepted(name) is None:
        name = sender_name(name)
    alternative = numbered(name, n)
    assert check_relpath(alternative)
    assert len(alternative.rpartition("/")[2].encode()) <= 255
    assert alternative != name
