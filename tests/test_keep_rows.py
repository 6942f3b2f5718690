"""Cutting a run's tables back to a round on resume (``keep_rows``, ``truncate_rows_after``): the rows kept
exactly as written, in JSON lines and CSV, one row at a time (a large run's tables are gigabytes)."""

from __future__ import annotations

import json
import tracemalloc

from fedmtl.core.files import RowWriter, iter_rows, keep_rows, read_rows
from fedmtl.runfiles.checkpoint import truncate_rows_after


def test_json_rows_of_later_rounds_go_and_the_others_stay_byte_for_byte(tmp_path):
    path = tmp_path / "server.jsonl"
    lines = [json.dumps({"round": r, "x": 0.1 * r, "nested": {"a": [r, r]}}) + "\n" for r in (1, 2, 3, 2, 4)]
    path.write_text("".join(lines) + "\n")  # a blank line too
    assert truncate_rows_after(path, 2) == 3
    assert path.read_text() == lines[0] + lines[1] + lines[3]
    assert truncate_rows_after(tmp_path / "absent.jsonl", 2) == 0


def test_csv_rows_keep_their_header_and_fields_as_written(tmp_path):
    path = tmp_path / "metrics.csv"
    RowWriter(path, ["round", "client", "value"], csv_format=True).write(
        [{"round": r, "client": c, "value": f"{r}.50"} for r in (0, 1, 2) for c in (0, 1)]
    )
    before = path.read_text().splitlines()
    assert keep_rows(path, lambda row: row["round"] <= 1) == 4
    assert path.read_text().splitlines() == before[:5]  # header and the rows of rounds 0 and 1, unchanged
    assert [r["round"] for r in iter_rows(path)] == [0, 0, 1, 1] and read_rows(path)[0]["value"] == 0.5


def test_a_large_table_is_cut_without_reading_it_whole(tmp_path):
    path = tmp_path / "server.jsonl"
    row = {"round": 0, "cosines": [0.123456789] * 20_000}  # about 240 KB a row, as at 200 clients a round
    with path.open("w") as out:
        for r in range(1, 101):
            out.write(json.dumps({**row, "round": r}) + "\n")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        kept = truncate_rows_after(path, 50)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert kept == 50 and peak < size / 10, (peak, size)  # a row or two at a time, not the 24 MB table
