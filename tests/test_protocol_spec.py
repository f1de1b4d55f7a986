"""protocol/SPEC.md agrees with the code: every message table lists exactly the fields of its
class with their wire types and required flags; dtypes, kinds, reject reasons and the worked
example match the codec."""
from __future__ import annotations

import re
from pathlib import Path

from protocol import MESSAGE_TYPES, Heartbeat, decode_envelope
from protocol.codec import ALLOWED_DTYPES, SCHEMA_VERSION, _fields
from protocol.schema import Seq

SPEC = (Path(__file__).resolve().parents[1] / "protocol" / "SPEC.md").read_text()
CODEC = (Path(__file__).resolve().parents[1] / "protocol" / "codec.py").read_text()


def _cells(line: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def spec_tables() -> dict[str, list[tuple[str, str, bool]]]:
    tables, current = {}, None
    for line in SPEC.splitlines():
        heading = re.match(r"### (\w+)", line)
        if heading:
            current = tables.setdefault(heading.group(1), [])
        elif current is not None and line.startswith("| `"):
            name, wire, required, _meaning = _cells(line)
            current.append((name.strip("`"), wire, required == "yes"))
        elif line.startswith("## "):
            current = None
    return tables


def all_structs() -> list[type]:
    out, todo = [], list(MESSAGE_TYPES.values())
    while todo:
        cls = todo.pop(0)
        if cls not in out:
            out.append(cls)
            todo += [spec.item for _, spec, _ in _fields(cls) if isinstance(spec, Seq)]
    return out


def test_every_struct_has_a_table_that_matches_its_fields():
    tables = spec_tables()
    structs = all_structs()
    assert {c.__name__ for c in structs} == set(tables)
    for cls in structs:
        expected = [(name, spec.describe(), not has_default) for name, spec, has_default in _fields(cls)]
        assert tables[cls.__name__] == expected, cls.__name__


def test_kinds_version_and_dtypes_are_documented():
    assert f"schema version {SCHEMA_VERSION}" in SPEC and f"must be `{SCHEMA_VERSION}`" in SPEC
    for kind, cls in MESSAGE_TYPES.items():
        assert f"kind `{kind}`" in SPEC, kind
    dtypes = set(re.findall(r"`([<|][a-z]\d)`", SPEC.split("**Arrays.**")[1].split("**Body.**")[0]))
    assert dtypes == set(ALLOWED_DTYPES)


def test_every_reject_reason_of_the_codec_is_documented():
    reasons = set(re.findall(r'DecodeError\("(\w+)"', CODEC))
    table = SPEC.split("## 4. Rejects")[1].split("## 5.")[0]
    documented = set(re.findall(r"^\| `(\w+)` \|", table, re.M))
    assert reasons and reasons == documented


def test_worked_example_decodes_as_stated():
    block = SPEC.split("## 9. Example")[1]
    frame0 = bytes.fromhex(re.search(r"frame 0: ([0-9a-f ]+?)\s{2,}", block).group(1))
    hex1 = re.search(r"frame 1: ([0-9a-f \n]+?)\n\s+=", block).group(1)
    frame1 = bytes.fromhex(" ".join(hex1.split()))
    topic, msg, seq = decode_envelope([frame0, frame1])
    assert topic == "hb/cam0" and seq == 41
    assert msg == Heartbeat(node="cam0", t_ns=1700000000000000000, seq=7)
