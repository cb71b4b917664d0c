"""Tests for optical_jax.data.io: line, JSONL and TSV reading, typed fields, config mappings, one error format."""

from __future__ import annotations

import dataclasses
import gzip
from typing import Optional, Tuple

import pytest

from optical_jax import errors
from optical_jax.data import io
from optical_jax.errors import InputError


def _write(path, data: bytes) -> str:
  if str(path).endswith(".gz"):
    with gzip.open(path, "wb") as f:
      f.write(data)
  else:
    path.write_bytes(data)
  return str(path)


# --- lines -----------------------------------------------------------------------------------

TRICKY = "\ufeffone\r\ntwo\u2028still two\u0085and\x1c this\n\nlast without newline".encode("utf-8")
TRICKY_LINES = ["one", "two\u2028still two\u0085and\x1c this", "", "last without newline"]


@pytest.mark.parametrize("name", ["t.txt", "t.txt.gz"])
def test_lines_plain_and_gzip_read_the_same(tmp_path, name):
  p = _write(tmp_path / name, TRICKY)
  assert io.read_text_lines(p) == TRICKY_LINES
  assert list(io.iter_lines(p)) == list(enumerate(TRICKY_LINES, start=1))


def test_only_a_leading_bom_and_one_cr_are_dropped(tmp_path):
  p = _write(tmp_path / "b.txt", "a\r\r\n\ufeffb\rc\n".encode("utf-8"))
  assert io.read_text_lines(p) == ["a\r", "\ufeffb\rc"]
  assert io.read_text_lines(_write(tmp_path / "e.txt", b"")) == []
  assert io.read_text_lines(_write(tmp_path / "n.txt", b"\n\n")) == ["", ""]


@pytest.mark.parametrize("name", ["bad.txt", "bad.txt.gz"])
def test_bad_utf8_names_path_and_line(tmp_path, name):
  p = _write(tmp_path / name, b"ok\nstill ok\nbad \xff\xfe byte\n")
  with pytest.raises(InputError) as err:
    io.read_text_lines(p)
  assert (err.value.path, err.value.line) == (p, 3)
  assert str(err.value) == (f"{p}:3: not valid UTF-8 (invalid start byte at byte 4 of the line: "
                            "b'\\xff\\xfe b')")


def test_missing_file_directory_and_corrupt_gzip_are_one_line(tmp_path):
  missing = tmp_path / "nope.txt"
  with pytest.raises(InputError) as err:
    io.read_text_lines(missing)
  assert str(err.value) == f"{missing}: file not found"
  with pytest.raises(InputError) as err:
    list(io.iter_json_objects(tmp_path))
  assert str(err.value) == f"{tmp_path}: is a directory, expected a file"
  bad = tmp_path / "x.jsonl.gz"
  bad.write_bytes(b"not gzip at all")
  with pytest.raises(InputError) as err:
    io.read_text_lines(bad)
  assert str(err.value).startswith(f"{bad}: cannot read: ") and "\n" not in str(err.value)
  assert io.check_file(bad) == str(bad)


def test_as_paths():
  assert io.as_paths("a") == ["a"]
  assert io.as_paths(["a", "b"]) == ["a", "b"]
  import pathlib  # pylint: disable=g-import-not-at-top
  assert io.as_paths(pathlib.Path("x") / "y") == ["x/y"]


# --- JSON lines ------------------------------------------------------------------------------


def test_json_objects_skip_blank_lines(tmp_path):
  p = _write(tmp_path / "o.jsonl.gz", b'{"a": 1}\n\n  \n{"b": "\xc3\xa9"}\n')
  assert list(io.iter_json_objects(p)) == [(1, {"a": 1}), (4, {"b": "\u00e9"})]


@pytest.mark.parametrize("line, message", [
    ('{"a": ', "not a JSON line (malformed JSON: Expecting value, column 7)"),
    ("{not json}", "not a JSON line (malformed JSON: Expecting property name enclosed in double "
                   "quotes, column 2)"),
    ("[1, 2]", "expected a JSON object, found list"),
    ('"text"', "expected a JSON object, found str"),
])
def test_bad_json_line(tmp_path, line, message):
  p = _write(tmp_path / "o.jsonl", ('{"a": 1}\n' + line + "\n").encode())
  with pytest.raises(InputError) as err:
    list(io.iter_json_objects(p))
  assert str(err.value) == f"{p}:2: {message}"


# --- TSV -------------------------------------------------------------------------------------


def test_tsv_fields_and_column_counts(tmp_path):
  p = _write(tmp_path / "t.tsv", b"h1\th2\th3\na\tb\n\nc\td\te\n")
  assert list(io.iter_tsv(p)) == [(1, ["h1", "h2", "h3"]), (2, ["a", "b"]), (4, ["c", "d", "e"])]
  assert list(io.iter_tsv(p, (2, 3), keep_blank=True, header=True)) == [
      (2, ["a", "b"]), (3, []), (4, ["c", "d", "e"])]
  with pytest.raises(InputError) as err:
    list(io.iter_tsv(p, 2, header=True))
  assert str(err.value) == f"{p}:4: expected 2 tab-separated columns, found 3"
  with pytest.raises(InputError) as err:
    list(io.iter_tsv(p, (3, 4), layout="id<TAB>a<TAB>b"))
  assert str(err.value) == f"{p}:2: expected 3 or 4 tab-separated columns (id<TAB>a<TAB>b), found 2"


# --- fields ----------------------------------------------------------------------------------


def test_string_field():
  obj = {"text": "x", "none": None, "num": 3}
  assert io.string_field(obj, "text", "f", 1) == "x"
  assert io.string_field(obj, "none", "f", 1) == ""  # JSON null reads as empty
  assert io.string_field(obj, "absent", "f", 1, required=False) == ""
  with pytest.raises(InputError) as err:
    io.string_field(obj, "absent", "f", 2)
  assert str(err.value) == ("f:2: missing 'absent' (missing field 'absent'; "
                            "fields present: 'text', 'none', 'num')")
  with pytest.raises(InputError) as err:
    io.string_field(obj, "num", "f", 3)
  assert str(err.value) == "f:3: 'num' must be a string (field 'num' is int)"
  with pytest.raises(InputError, match=r"fields present: none\)$"):
    io.field({}, "a", "f", 1)
  assert io.field({}, "a", "f", 1, required=False) is None


@pytest.mark.parametrize("value, problem", [
    (None, "'_id' must be a string (field '_id' is NoneType)"),
    (True, "'_id' must be a string (field '_id' is bool)"),
    (1.5, "'_id' must be a string (field '_id' is float)"),
    ("", "'_id' must be non-empty and contain no whitespace: ''"),
    ("a b", "'_id' must be non-empty and contain no whitespace: 'a b'"),
])
def test_id_field_errors(value, problem):
  with pytest.raises(InputError) as err:
    io.id_field({"_id": value}, "_id", "c.jsonl", 4)
  assert str(err.value) == f"c.jsonl:4: {problem}"


def test_id_field_accepts_strings_and_integers():
  assert io.id_field({"_id": "d-1"}, "_id", "f", 1) == "d-1"
  assert io.id_field({"_id": 7}, "_id", "f", 1) == "7"


# --- empty records ---------------------------------------------------------------------------


def test_empty_policy():
  skip = io.EmptyPolicy("skip", "pairs")
  assert [skip.admit(p, "f", i) for i, p in enumerate([None, "empty query", ""], 1)] == [True, False, True]
  assert (skip.read, skip.skipped) == (3, 1)
  strict = io.EmptyPolicy("error", "examples")
  with pytest.raises(InputError) as err:
    strict.admit("empty query", "f", 9)
  assert str(err.value) == "f:9: empty query (set empty: skip to drop such examples)"
  with pytest.raises(InputError, match=r"empty must be one of \('skip', 'error'\), got 'keep'"):
    io.EmptyPolicy("keep", "pairs")


# --- config mappings -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Cfg:
  size: int
  name: str = "x"
  shape: Tuple[int, ...] = (1,)
  note: Optional[str] = None

  def __post_init__(self):
    errors.check_int(self.size, "size", 1)


def test_build_from_mapping():
  assert errors.build(_Cfg, {"size": 2, "name": "y"}, "cfg") == _Cfg(2, "y")
  same = _Cfg(3)
  assert errors.build(_Cfg, same, "cfg") is same
  with pytest.raises(InputError) as err:
    errors.build(_Cfg, {"size": 2, "sise": 3, "colour": 1}, "cfg")
  assert str(err.value) == ("cfg: unknown keys ['colour', 'sise']; "
                            "allowed: ['name', 'note', 'shape', 'size']")
  with pytest.raises(InputError) as err:
    errors.build(_Cfg, {"name": "y"}, "cfg")
  assert str(err.value) == "cfg: missing ['size']"
  with pytest.raises(InputError, match="cfg must be a mapping, got list"):
    errors.build(_Cfg, [("size", 2)], "cfg")
  with pytest.raises(InputError, match="size must be a positive integer, got 0"):
    errors.build(_Cfg, {"size": 0}, "cfg")


def test_check_int_and_check_keys():
  assert errors.check_int(0, "take") == 0 and errors.check_int(-4, "seed", None) == -4
  for value, minimum, kind in [(-1, 0, "a non-negative integer"), (True, 0, "a non-negative integer"),
                               (0, 1, "a positive integer"), (1, 2, "an integer >= 2"),
                               (1.0, None, "an integer")]:
    with pytest.raises(InputError) as err:
      errors.check_int(value, "n", minimum)
    assert str(err.value) == f"n must be {kind}, got {value!r}"
  errors.check_keys({"a": 1}, {"a", "b"}, "spec", required=("a",))
  with pytest.raises(InputError, match=r"^spec: missing \['b'\]$"):
    errors.check_keys({"a": 1}, {"a", "b"}, "spec", required=("a", "b"))
