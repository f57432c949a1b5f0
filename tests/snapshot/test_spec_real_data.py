"""Specs over real files, in the shapes that broke them: a ' ' in a number column, Yes/No columns, a
table without a key, 85 columns named by globs, a malformed CSV, a sql table reading a later table, a
DOUBLE 0/1 column. Each built snapshot is compared with pandas over the same file (docs/spec.md)."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from segsrv.errors import BuildError, SpecError
from segsrv.service import run_json
from segsrv.snapshot.builder import band_labels, build_snapshot
from segsrv.snapshot.reader import open_snapshot
from segsrv.snapshot.spec import expand_column_globs, parse_spec
from support import assert_field_matches, quiet


def build(tmp_path: Path, spec: str, files: dict[str, str]):
    """Write FILES and SPEC into tmp_path/data, build, open the snapshot."""
    data = tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (data / name).write_text(text)
    (data / "spec.toml").write_text(textwrap.dedent(spec))
    return open_snapshot(build_snapshot(data / "spec.toml", tmp_path / "root", progress=quiet))


def literal(text: str) -> pd.DataFrame:
    """A CSV as its literal cells (only an empty cell is missing)."""
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])


def pairs(df: pd.DataFrame, key: str, column: str, label=str):
    return [(k, label(v)) for k, v in zip(df[key], df[column]) if not pd.isna(v)]


def band_pairs(ids, numbers, edges):
    labels = band_labels(edges)
    return [(k, labels[int(np.searchsorted(edges, x, side="right"))]) for k, x in zip(ids, numbers) if not np.isnan(x)]


DOCS = Path(__file__).resolve().parents[2] / "docs" / "spec.md"


def docs_toml(heading: str) -> str:
    """The first ```toml block after HEADING in docs/spec.md."""
    text = DOCS.read_text()
    return text[text.index(heading):].split("```toml\n", 1)[1].split("```", 1)[0]


# --- (a) missing values ------------------------------------------------------------------------------------

SURVEY = "id,age,region,score\n1,34,north,2.5\n2, ,south,\n3,51,?,1\n4,,north, \n5,29, ,7\n6,64,south,?\n"


def test_null_values_for_every_column_turn_a_blank_number_into_a_missing_one(tmp_path):
    spec = """\
        name = "survey"
        [tables.people]
        file = "people.csv"
        key = "id"
        null_values = [" ", "?"]
        categorical = ["region"]
        numeric = { age = { edges = [30, 50] }, score = { edges = [2] } }
        [universes.people]
        """
    u = build(tmp_path, spec, {"people.csv": SURVEY}).universe("people")
    df = literal(SURVEY).replace({" ": None, "?": None})
    ids = df["id"].astype(int).tolist()
    for column, edges in (("age", [30, 50]), ("score", [2])):
        numbers = pd.to_numeric(df[column]).to_numpy(dtype=float)
        assert_field_matches(u, column, band_pairs(ids, numbers, edges))
        np.testing.assert_array_equal(u.field(column).numeric, numbers)  # keys 1..6 are rows 0..5
    assert_field_matches(u, "region", pairs(df.assign(id=ids), "id", "region"))
    assert set(u.field("region").values) == {"north", "south"}


def test_null_values_of_one_column_leave_the_same_text_elsewhere_a_value(tmp_path):
    spec = """\
        name = "survey"
        [tables.people]
        file = "people.csv"
        key = "id"
        null_values = { age = [" "], score = [" ", "?"] }
        categorical = ["region", "age"]
        numeric = { score = { edges = [2] } }
        [universes.people]
        """
    u = build(tmp_path, spec, {"people.csv": SURVEY}).universe("people")
    df = literal(SURVEY)
    df["id"] = df["id"].astype(int)
    assert_field_matches(u, "region", pairs(df, "id", "region"))  # '?' and ' ' stay regions
    assert {"?", " "} <= set(u.field("region").values)
    # the column is retyped as a number once ' ' is gone: its labels are the integers, not text
    assert_field_matches(u, "age", pairs(df.replace({"age": {" ": None}}), "id", "age", lambda v: str(int(v))))
    numbers = pd.to_numeric(df["score"].replace({" ": None, "?": None})).to_numpy(dtype=float)
    assert_field_matches(u, "score", band_pairs(df["id"], numbers, [2]))


def test_null_values_apply_to_json_tables_too(tmp_path):
    rows = ['{"id": 1, "age": "41"}', '{"id": 2, "age": " "}', '{"id": 3, "age": "n/a"}', '{"id": 4, "age": 18}']
    spec = """\
        name = "j"
        [tables.people]
        file = "people.ndjson"
        key = "id"
        null_values = [" ", "n/a"]
        numeric = { age = { edges = [30] } }
        [universes.people]
        """
    u = build(tmp_path, spec, {"people.ndjson": "\n".join(rows) + "\n"}).universe("people")
    assert_field_matches(u, "age", band_pairs([1, 2, 3, 4], np.array([41, np.nan, np.nan, 18.0]), [30]))


def test_a_blank_number_without_null_values_names_the_fix(tmp_path):
    spec = """\
        name = "survey"
        [tables.people]
        file = "people.csv"
        key = "id"
        numeric = { age = { edges = [30] } }
        [universes.people]
        """
    with pytest.raises(BuildError, match=r"numeric column 'age' has 1 unparsable values, e.g. id=2: ' ' "
                                         r"\(values that mark a missing number go in the table's null_values\)"):
        build(tmp_path, spec, {"people.csv": SURVEY})


@pytest.mark.parametrize("value, message", [
    ("' '", r"tables\.people\.null_values: expected list/dict, got str ' '"),
    ("[1]", r"tables\.people\.null_values: expected str, got int 1"),
    ("{ age = ' ' }", r"tables\.people\.null_values\.age: expected list, got str ' '"),
])
def test_null_values_of_the_wrong_shape(tmp_path, value, message):
    spec = f'name = "s"\n[tables.people]\nfile = "p.csv"\nkey = "id"\nnull_values = {value}\n[universes.people]\n'
    (tmp_path / "s.toml").write_text(spec)
    with pytest.raises(SpecError, match=message):
        build_snapshot(tmp_path / "s.toml", tmp_path / "root", progress=quiet)


def test_null_values_of_an_unknown_column(tmp_path):
    spec = """\
        name = "survey"
        [tables.people]
        file = "people.csv"
        key = "id"
        null_values = { agee = [" "] }
        categorical = ["region"]
        [universes.people]
        """
    with pytest.raises(BuildError, match=r"table 'people': column 'agee' \(null_values\) not found "
                                         r"\(did you mean 'age'\?\)"):
        build(tmp_path, spec, {"people.csv": SURVEY})


# --- (b) how types are decided, and forced strings ---------------------------------------------------------

PETS = "id,dog,cat,code,price\n1,Yes,Yes,007,1.50\n2,No,Maybe,8,2\n3,Yes,No,010,2.25\n4,no,Yes,8,1.50\n"


def test_a_yes_no_column_reads_as_a_boolean_unless_forced_to_text(tmp_path):
    spec = """\
        name = "pets"
        [tables.owners]
        file = "owners.csv"
        key = "id"
        categorical = ["dog", "cat", "code", "price"]
        [universes.owners]
        """
    u = build(tmp_path, spec, {"owners.csv": PETS}).universe("owners")
    df = literal(PETS)
    df["id"] = df["id"].astype(int)
    # the documented rule: only yes/no values -> a boolean (true / false); a third value keeps the text
    assert_field_matches(u, "dog", pairs(df, "id", "dog", lambda v: "true" if v.lower() == "yes" else "false"))
    assert_field_matches(u, "cat", pairs(df, "id", "cat"))
    assert_field_matches(u, "code", pairs(df, "id", "code"))  # leading zeros: text
    assert_field_matches(u, "price", pairs(df, "id", "price", lambda v: repr(float(v)).removesuffix(".0")))

    forced = build(tmp_path / "forced", spec.replace('key = "id"', 'key = "id"\n        strings = ["dog", "pr*"]'),
                   {"owners.csv": PETS}).universe("owners")
    assert_field_matches(forced, "dog", pairs(df, "id", "dog"))  # the file's literal Yes / No / no
    assert_field_matches(forced, "price", pairs(df, "id", "price"))  # '1.50', '2'
    assert set(forced.field("dog").values) == {"Yes", "No", "no"}


def test_strings_of_a_parquet_table_are_the_values_as_text(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    pd.DataFrame({"id": [1, 2, 3], "flag": [True, False, True], "n": [3, 4, 3]}).to_parquet(data / "t.parquet")
    spec = 'name = "p"\n[tables.t]\nfile = "t.parquet"\nkey = "id"\nstrings = ["flag", "n"]\n' \
           'categorical = ["flag", "n"]\n[universes.t]\n'
    u = build(tmp_path, spec, {}).universe("t")
    assert_field_matches(u, "flag", [(1, "true"), (2, "false"), (3, "true")])
    assert_field_matches(u, "n", [(1, "3"), (2, "4"), (3, "3")])


def test_strings_naming_no_column(tmp_path):
    spec = 'name = "pets"\n[tables.owners]\nfile = "owners.csv"\nkey = "id"\nstrings = ["dgo"]\n' \
           'categorical = ["dog"]\n[universes.owners]\n'
    with pytest.raises(BuildError, match=r"column 'dgo' \(strings\) not found \(did you mean 'dog'\?\)"):
        build(tmp_path, spec, {"owners.csv": PETS})


# --- (c) a table without a key -----------------------------------------------------------------------------

EVENTS = "kind,page\nview,home\nview,home\nclick,cart\nview,cart\nclick,home\n"


def test_row_key_numbers_the_rows_in_file_order(tmp_path):
    spec = """\
        name = "ev"
        [tables.events]
        file = "events.csv"
        key = "$row"
        categorical = ["kind", "page"]
        [universes.events]
        """
    snap = build(tmp_path, spec, {"events.csv": EVENTS})
    u = snap.universe("events")
    df = literal(EVENTS)
    df["row"] = np.arange(1, len(df) + 1)
    assert u.key == "$row" and u.ids_for_rows(np.arange(u.n_rows)) == df["row"].tolist()
    for column in ("kind", "page"):
        assert_field_matches(u, column, pairs(df, "row", column))
    want = int(((df["kind"] == "view") & (df["page"] == "home")).sum())
    assert run_json("count", snap, {"where": {"kind": "view", "page": "home"}})["count"] == want


def test_row_key_of_a_sql_table_is_refused():
    raw = {"name": "s", "tables": {"t": {"sql": "SELECT 1 AS x", "key": "$row"}}, "universes": {"t": {}}}
    with pytest.raises(SpecError, match=r"tables\.t\.key: '\$row' numbers the rows of a file; a sql table's row "
                                        r"order is not defined: number them in the query"):
        parse_spec(raw, Path("."))


# --- (d) 85 columns by globs -------------------------------------------------------------------------------


def wide_csv(seed: int = 5) -> str:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"id": np.arange(1, 201)})
    for i in range(1, 81):
        df[f"q{i:02d}"] = rng.choice(["a", "b", "c"], size=len(df))
    for i in range(1, 6):
        df[f"amt_{i}"] = rng.integers(0, 40, size=len(df))
    return df.to_csv(index=False)


WIDE_SPEC = """\
    name = "wide"
    [tables.answers]
    file = "answers.csv"
    key = "id"
    categorical = ["q*", "amt_5"]
    numeric = { "amt_*" = { edges = [10, 20] }, amt_3 = { edges = [5] } }
    [universes.answers]
    """


def test_globs_declare_85_columns(tmp_path):
    text = wide_csv()
    u = build(tmp_path, WIDE_SPEC, {"answers.csv": text}).universe("answers")
    df = literal(text)
    df["id"] = df["id"].astype(int)
    questions = [f"q{i:02d}" for i in range(1, 81)]
    assert sorted(u.fields) == sorted(questions + [f"amt_{i}" for i in range(1, 6)])
    for q in questions + ["amt_5"]:
        assert u.field(q).kind == "categorical"
        assert_field_matches(u, q, pairs(df, "id", q))
    # explicit entries win over globs: amt_5 is categorical, amt_3 has its own edges
    for i in range(1, 5):
        edges = [5] if i == 3 else [10, 20]
        numbers = df[f"amt_{i}"].astype(float).to_numpy()
        assert_field_matches(u, f"amt_{i}", band_pairs(df["id"], numbers, edges))


def test_globs_expand_in_order_explicit_first_and_never_to_the_key_or_a_link_column():
    raw = {"name": "s", "tables": {
        "c": {"file": "c.csv", "key": "id", "categorical": ["z*", "a*", "a1"],
              "links": {"o": {"column": "a_link", "table": "c"}}}}, "universes": {"c": {}}}
    table = parse_spec(raw, Path(".")).tables["c"]
    expanded = expand_column_globs(table, ["id", "a2", "zb", "a_link", "a1", "za"])
    assert expanded.categorical == ["zb", "za", "a2", "a1"]


@pytest.mark.parametrize("change, error, message", [
    (('"q*", "amt_5"', '"q*", "x*"'), SpecError,
     r"^tables\.answers\.categorical: pattern 'x\*' matches no column of the table; its columns \(but the key "
     r"and link columns\) are \['q01', 'q02'"),
    (('"q*", "amt_5"', '"q*", "am*"'), SpecError,
     r"^tables\.answers: column 'amt_1' is matched by both categorical and numeric \(name it explicitly in one"),
    (('"amt_*"', 'amt_5'), SpecError,
     r"^tables\.answers: column 'amt_5' is declared both categorical and numeric"),
])
def test_glob_errors(tmp_path, change, error, message):
    spec = WIDE_SPEC.replace(*change)
    with pytest.raises(error, match=message):
        build(tmp_path, spec, {"answers.csv": wide_csv()})


# --- (e) DuckDB's whole read error -------------------------------------------------------------------------


def test_a_malformed_csv_error_lists_duckdbs_possible_fixes(tmp_path):
    text = "id,kind\n" + "".join(f"{i},k{i % 3}\n" for i in range(1, 30001)) + "30001,k1,extra\n"
    spec = 'name = "m"\n[tables.t]\nfile = "t.csv"\nkey = "id"\ncategorical = ["kind"]\n[universes.t]\n'
    with pytest.raises(BuildError) as caught:
        build(tmp_path, spec, {"t.csv": text})
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("table 't': cannot read ") and "CSV Error on Line: 30002" in lines[0]
    assert "  Original Line: 30001,k1,extra" in lines
    assert "  Possible fixes:" in lines
    assert any("ignore_errors=true" in line for line in lines)
    assert lines[-1].startswith("  In the spec: strings = [COLUMN] reads a column as text")
    assert all(line.startswith("  ") for line in lines[1:])

    # the documented way to apply a fix: read the file in a sql table with the option (docs/spec.md's example)
    fixed = 'name = "m"\n' + docs_toml("DuckDB's fixes are options").replace("/data/t.csv", str(tmp_path / "data" / "t.csv")) \
        + "[universes.t]\n"
    u = build(tmp_path / "fixed", fixed, {}).universe("t")
    df = pd.read_csv(tmp_path / "data" / "t.csv", dtype=str, on_bad_lines="skip")
    df["id"] = df["id"].astype(int)
    assert_field_matches(u, "kind", pairs(df, "id", "kind"))


# --- (f) sql tables in any order ---------------------------------------------------------------------------

ORDERS = "order_id,customer,total\n1,ann,10\n2,bob,5\n3,ann,7\n4,cid,12\n5,ann,3\n"


def test_a_sql_table_may_read_a_table_declared_after_it(tmp_path):
    spec = """\
        name = "shop"
        [tables.customers]
        sql = "SELECT customer, count(*) AS n_orders FROM big_orders GROUP BY customer"
        key = "customer"
        categorical = ["n_orders"]
        [tables.big_orders]
        sql = "SELECT * FROM orders WHERE total >= 5"
        key = "order_id"
        [tables.orders]
        file = "orders.csv"
        key = "order_id"
        [universes.customers]
        """
    u = build(tmp_path, spec, {"orders.csv": ORDERS}).universe("customers")
    df = pd.read_csv(io.StringIO(ORDERS))
    counts = df[df["total"] >= 5].groupby("customer").size()
    assert_field_matches(u, "n_orders", [(c, str(n)) for c, n in counts.items()])


def test_sql_tables_reading_each_other_are_a_cycle(tmp_path):
    spec = """\
        name = "shop"
        [tables.a]
        sql = "SELECT * FROM b"
        key = "order_id"
        [tables.b]
        sql = "SELECT * FROM a"
        key = "order_id"
        [tables.orders]
        file = "orders.csv"
        key = "order_id"
        categorical = ["customer"]
        [universes.orders]
        """
    with pytest.raises(BuildError, match=r"^sql tables read each other in a cycle: 'a' reads \['b'\], "
                                         r"'b' reads \['a'\]$"):
        build(tmp_path, spec, {"orders.csv": ORDERS})


# --- (g) DOUBLE 0/1 columns --------------------------------------------------------------------------------

FLAGS = "id,churned,share\n1,0.0,0.5\n2,1.0,1.0\n3,1.0,0.25\n4,0.0,\n5,1.0,2.0\n"


@pytest.mark.parametrize("value", [1, 1.0, "1"])
def test_integral_doubles_label_as_integers_and_where_takes_the_number(tmp_path, value):
    spec = 'name = "f"\n[tables.c]\nfile = "c.csv"\nkey = "id"\ncategorical = ["churned", "share"]\n[universes.c]\n'
    snap = build(tmp_path, spec, {"c.csv": FLAGS})
    u = snap.universe("c")
    df = pd.read_csv(io.StringIO(FLAGS))
    assert df["churned"].dtype == np.float64
    label = lambda x: str(int(x)) if float(x).is_integer() else repr(float(x))  # noqa: E731
    assert_field_matches(u, "churned", pairs(df, "id", "churned", label))
    assert_field_matches(u, "share", pairs(df, "id", "share", label))
    assert u.field("churned").values == ["0", "1"]
    assert run_json("count", snap, {"where": {"churned": value}})["count"] == int((df["churned"] == 1.0).sum())


# --- the examples of docs/spec.md, as written --------------------------------------------------------------

def test_docs_glob_example(tmp_path):
    text = wide_csv()
    df = literal(text)
    df["flag_1"], df["flag_2"] = "Yes", np.where(np.arange(len(df)) % 3, "No", "Yes")
    spec = 'name = "wide"\n[tables.answers]\nfile = "answers.csv"\nkey = "id"\n' + docs_toml("### Column globs") + \
           "[universes.answers]\n"
    u = build(tmp_path, spec, {"answers.csv": df.to_csv(index=False)}).universe("answers")
    assert u.field("amt_5").kind == "categorical" and u.field("amt_3").edges == [5.0]
    assert "flag_1" not in u.fields  # strings only says how to read it; it is not declared a feature
    assert sorted(f for f in u.fields if f.startswith("q")) == [f"q{i:02d}" for i in range(1, 81)]


def test_docs_missing_values_example_for_every_column(tmp_path):
    text = "id,age,income\n1,30,100\n2, ,?\n3,41,-1\n4,n/a,250\n"
    df = literal(text)
    df["id"] = df["id"].astype(int)
    line = [ln for ln in docs_toml("### Missing values").splitlines() if ln.startswith("null_values = [")][0]
    spec = f'name = "m"\n[tables.p]\nfile = "p.csv"\nkey = "id"\n{line}\n' \
           'numeric = { age = { edges = [35] }, income = { edges = [200] } }\n[universes.p]\n'
    u = build(tmp_path, spec, {"p.csv": text}).universe("p")
    for column, edges in (("age", [35]), ("income", [200])):  # '-1' is not a marker here: a number
        numbers = pd.to_numeric(df[column].where(~df[column].isin({" ", "?", "n/a"}))).to_numpy(dtype=float)
        assert_field_matches(u, column, band_pairs(df["id"], numbers, edges))


def test_docs_per_column_missing_values_example(tmp_path):
    text = "id,age,income\n1,30,100\n2, ,?\n3,41,-1\n4,,250\n"
    df = literal(text)
    df["id"] = df["id"].astype(int)
    line = [ln for ln in docs_toml("### Missing values").splitlines() if ln.startswith("null_values = {")][0]
    spec = f'name = "m"\n[tables.p]\nfile = "p.csv"\nkey = "id"\n{line}\n' \
           'numeric = { age = { edges = [35] }, income = { edges = [200] } }\n[universes.p]\n'
    u = build(tmp_path, spec, {"p.csv": text}).universe("p")
    for column, edges, markers in (("age", [35], {" "}), ("income", [200], {"?", "-1"})):
        numbers = pd.to_numeric(df[column].where(~df[column].isin(markers))).to_numpy(dtype=float)
        assert_field_matches(u, column, band_pairs(df["id"], numbers, edges))


def test_a_marker_matches_a_parquet_number_by_its_text(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    df = pd.DataFrame({"id": [1, 2, 3, 4], "income": [120, -1, 80, -1], "kids": [-1, 2, 0, 1]})
    df.to_parquet(data / "t.parquet")
    spec = 'name = "p"\n[tables.t]\nfile = "t.parquet"\nkey = "id"\nnull_values = { income = ["-1"] }\n' \
           'numeric = { income = { edges = [100] } }\ncategorical = ["kids"]\n[universes.t]\n'
    u = build(tmp_path, spec, {}).universe("t")
    income = df["income"].where(df["income"] != -1).to_numpy(dtype=float)
    assert_field_matches(u, "income", band_pairs(df["id"], income, [100]))
    assert_field_matches(u, "kids", pairs(df, "id", "kids"))  # -1 of another column stays a value
