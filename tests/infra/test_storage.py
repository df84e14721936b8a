"""Line-aligned byte ranges: however a JSONL file is cut, every line is read once, numbered as in a
whole-file read (blank lines, bad lines, multi-byte characters and a missing final newline included)."""

import json

import pytest

from lrat_ray.infra import storage


@pytest.fixture
def jsonl(tmp_path):
    lines = []
    for i in range(40):
        if i % 7 == 3:
            lines.append("")  # blank lines count as lines
        elif i % 11 == 5:
            lines.append("{not json")
        else:
            lines.append(json.dumps({"id": i, "text": "é" * (i % 5) + "x" * (i * 13 % 97)}, ensure_ascii=False))
    path = tmp_path / "runs.jsonl"
    path.write_text("\n".join(lines))  # no newline at the end
    return str(path)


def _decoded(records):
    return [(position, record if not isinstance(record, Exception) else str(record)) for position, record in records]


@pytest.mark.parametrize("piece_bytes", [1, 7, 64, 333, 10_000])
def test_byte_ranges_read_every_line_once_with_whole_file_positions(jsonl, piece_bytes):
    import os

    whole = _decoded(storage.iter_records(jsonl))
    size = os.path.getsize(jsonl)
    ranges = storage.byte_ranges(size, piece_bytes)
    assert ranges[0][0] == 0 and ranges[-1][1] == size and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    pieces = []
    for start, end in ranges:
        first_line = 1 if start == 0 else storage.count_newlines(jsonl, 0, start - 1) + 2
        pieces.extend(_decoded(storage.iter_records(jsonl, (start, end, first_line))))
    assert pieces == whole and len(whole) > 30
    assert storage.count_newlines(jsonl, 0, size) == 39
