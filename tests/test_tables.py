"""segsrv.tables: the cells and alignment of `--format table` (the answers' tables are checked against
brute-force counts in tests/test_cli_format.py)."""

from __future__ import annotations

import pytest

from segsrv import tables


@pytest.mark.parametrize("value,key,text", [
    (None, "lift", "-"), (True, "member", "true"), (1234567, "support", "1,234,567"),
    (0.000123456, "p_value", "1.23e-04"), (0.000123456, "p", "0.0001235"), (1.40672, "lift", "1.407"),
    (float("inf"), "lift", "inf"), ("-inf", "log_ratio", "-inf"), (float("nan"), "lift", "-"),
    (123456.7, "mean", "123,457"), (["a", "b"], "tags", "a, b"), ("oulu", "value", "oulu"),
])
def test_cell(value, key, text):
    assert tables.cell(value, key) == text


def test_table_aligns_numbers_right_and_text_left():
    out = tables.table(["name", "size", "share"], [
        {"name": "a", "size": 5, "share": None}, {"name": "longer", "size": 12345, "share": 0.5}])
    assert out.splitlines() == [
        "name      size  share",
        "a            5      -",
        "longer  12,345    0.5",
    ]


def test_relate_table_names_every_hit():
    answer = {"snapshot": "s", "version": "v", "from": "u", "n_rows": 10, "n_condition": 4, "n_candidates": 3,
              "n_matching": 2, "plan": "scan", "elapsed_ms": 0.2, "hits": [
                  {"$field": "region", "$value": "north", "$lift": 2.0, "region": "north"},
                  {"$field": "band", "$value": "low", "$lift": 1.5, "region": None}]}
    lines = tables.relate(answer).splitlines()
    assert lines[0] == ("s v / u: 4 of 10 rows in the condition; 2 of 3 candidate features pass; 2 shown "
                        "(plan scan, 0.2 ms)")
    assert [line.split() for line in lines[2:]] == [["field", "value", "lift"], ["region", "north", "2"],
                                                    ["band", "low", "1.5"]]
