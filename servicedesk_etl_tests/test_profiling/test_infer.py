import json
import sqlite3
from pathlib import Path

import pytest

from servicedesk_etl.profiling.convert import convert_column
from servicedesk_etl.profiling.infer import ProfileSettings, profile_database
from servicedesk_etl.profiling.plan import TARGET_TYPES, Plan
from servicedesk_etl.profiling.values import read_table
from servicedesk_etl.sqlite_source import file_sha256, open_readonly
from servicedesk_etl_tests.conftest import CORPUS_FILES


def snapshot(path: Path, ddl: str, rows: list[tuple]) -> Path:
    conn = sqlite3.connect(path)
    conn.execute(ddl)
    marks = ", ".join("?" * len(rows[0]))
    conn.executemany(f"INSERT INTO t VALUES ({marks})", rows)
    conn.commit()
    conn.close()
    return path


def column_plan(path: Path, column: str, settings: ProfileSettings = ProfileSettings()):
    return profile_database(path, settings).table("t").column(column)


# --- the corpus: decisions a careful engineer would make -----------------------------------------


@pytest.fixture(scope="module")
def corpus_plans(tmp_path_factory) -> dict[str, Plan]:
    import shutil

    from servicedesk_etl_tests.conftest import CORPUS_DIR

    folder = tmp_path_factory.mktemp("corpus")
    plans = {}
    for name in CORPUS_FILES:
        shutil.copyfile(CORPUS_DIR / name, folder / name)
        plans[name] = profile_database(folder / name)
    return plans


def test_every_column_of_every_corpus_file_gets_a_plan_and_a_confidence(corpus_plans):
    assert len(corpus_plans) == 8
    for plan in corpus_plans.values():
        assert plan.tables
        for table in plan.tables:
            for column in table.columns:
                assert column.target_type in TARGET_TYPES
                assert 0.0 <= column.confidence <= 1.0
                assert column.reason
                assert column.profile.rows == table.row_count


@pytest.mark.parametrize(
    "file, table, column, targets",
    [
        ("chinook.sqlite", "Invoice", "InvoiceDate", {"timestamp"}),
        ("chinook.sqlite", "Invoice", "Total", {"numeric", "double precision"}),
        ("chinook.sqlite", "Track", "Composer", {"text"}),
        ("chinook.sqlite", "Employee", "BirthDate", {"timestamp"}),
        ("northwind.sqlite", "Order", "OrderDate", {"date"}),
        ("northwind.sqlite", "Order", "Freight", {"numeric"}),
        ("northwind.sqlite", "OrderDetail", "Id", {"text"}),
        ("northwind.sqlite", "Territory", "Id", {"text"}),
        ("sakila.sqlite", "payment", "amount", {"numeric"}),
        ("sakila.sqlite", "address", "address2", {"text"}),
        ("sakila.sqlite", "address", "phone", {"text"}),
        ("sakila.sqlite", "address", "postal_code", {"text"}),
        ("sakila.sqlite", "customer", "active", {"boolean"}),
        ("sakila.sqlite", "rental", "rental_date", {"timestamp"}),
        ("pgloader-sqlite.db", "currentdate", "my_value", {"timestamp", "date"}),
        ("pgloader-sqlite.db", "reals", "f1", {"double precision"}),
        ("pgloader-sqlite.db", "blobs", "data", {"bytea"}),
        ("pgloader-bad-utf8.db", "files", "filename", {"text"}),
        ("pgloader-type-mismatch.db", "products", "qty", {"bigint"}),
    ],
)
def test_corpus_column_targets(corpus_plans, file, table, column, targets):
    assert corpus_plans[file].table(table).column(column).target_type in targets


def test_pgloader_intege_column_is_text_and_says_why(corpus_plans):
    column = corpus_plans["pgloader-sqlite.db"].table("intege").column("id")
    assert column.target_type == "text"
    assert column.confidence == 1.0
    assert "1 integer" in column.reason and "1 real" in column.reason and "1 text" in column.reason
    assert column.profile.storage_classes == {"integer": 1, "real": 1, "text": 1}


def test_a_declared_integer_column_with_a_word_in_it_stays_integer_and_names_the_word(corpus_plans):
    column = corpus_plans["pgloader-type-mismatch.db"].table("products").column("qty")
    assert (column.target_type, column.declared_type) == ("bigint", "INTEGER")
    assert column.confidence == pytest.approx(2 / 3)
    assert column.profile.counterexamples == ("lots-of-it",)
    assert "typed as declared" in column.reason and "'lots-of-it'" in column.reason


def test_a_majority_reading_that_is_not_the_declared_type_still_needs_the_typed_bar(corpus_plans):
    column = corpus_plans["pgloader-sqlite.db"].table("intege").column("id")
    assert column.declared_type == "intege" and column.target_type == "text"
    assert "double precision, converts only 66.67%" in column.reason and "(< 80%" in column.reason


def test_pgloader_stamps_mixing_integers_and_a_timestamp_stay_text_with_the_reason(corpus_plans):
    column = corpus_plans["pgloader-sqlite.db"].table("stamps").column("StartTime")
    assert column.target_type == "text"
    assert "timestamp" in column.reason and "50.00%" in column.reason and "'0'" in column.reason


def test_pgloader_def_counts_the_empty_string_apart_from_the_null(corpus_plans):
    profile = corpus_plans["pgloader-sqlite.db"].table("def").column("f1").profile
    assert (profile.empty_strings, profile.nulls) == (1, 0)
    assert corpus_plans["pgloader-sqlite.db"].table("def").column("f2").profile.nulls == 1


def test_pgloader_collision_columns_get_distinct_names_within_63_bytes(corpus_plans):
    columns = corpus_plans["pgloader-collision.db"].table("products").columns
    long_ones = [c for c in columns if len(c.name) == 64]
    assert len(long_ones) == 2
    assert long_ones[0].pg_name != long_ones[1].pg_name
    assert all(len(c.pg_name.encode()) <= 63 and "renamed" in c.reason for c in long_ones)
    assert [c.pg_name for c in columns if len(c.name) < 64] == ["id", "name"]


def test_reserved_table_names_are_kept(corpus_plans):
    assert corpus_plans["northwind.sqlite"].table("Order").pg_name == "Order"
    assert corpus_plans["pgloader-sqlite.db"].table("references").pg_name == "references"


def test_pgloader_bad_utf8_blob_is_decoded_as_cp1252(corpus_plans, corpus_copy):
    column = corpus_plans["pgloader-bad-utf8.db"].table("files").column("filename")
    assert column.conversion.invalid_utf8 == "cp1252"
    raw = read_table(open_readonly(corpus_copy("pgloader-bad-utf8.db")), "files")["filename"]
    converted = convert_column(raw, column)
    assert converted.values.to_list() == ["valid-file.txt", "file\u2013name.txt", "another-valid.txt"]
    assert converted.operation.to_list()[1] == "decode_cp1252"


def test_declared_primary_keys_become_key_columns(corpus_plans):
    assert corpus_plans["chinook.sqlite"].table("Invoice").key_columns == ("InvoiceId",)
    assert corpus_plans["chinook.sqlite"].table("PlaylistTrack").key_columns == ()
    assert corpus_plans["pgloader-type-mismatch.db"].table("products").key_columns == ("id",)


def test_plan_json_round_trips(corpus_plans):
    for plan in corpus_plans.values():
        assert Plan.from_json(plan.to_json()) == plan


def test_profiling_leaves_the_source_unchanged(corpus_copy):
    path = corpus_copy("chinook.sqlite")
    before = file_sha256(path)
    plan = profile_database(path)
    assert file_sha256(path) == before == plan.source_sha256


# --- the demo snapshot: the truth file -----------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from servicedesk_etl.demo_data import generate_demo_snapshot

    summary = generate_demo_snapshot(tmp_path_factory.mktemp("demo") / "servicedesk_tickets.db", scale=0.01, seed=42)
    return profile_database(summary.path), json.loads(summary.truth_path.read_text(encoding="utf-8"))


def test_demo_plan_target_types_equal_the_truth(demo):
    plan, truth = demo
    planned = {table.name: {c.name: c.target_type for c in table.columns} for table in plan.tables}
    assert planned == truth["column_types"]


def test_demo_nine_day_first_response_dates_are_found(demo):
    plan, _ = demo
    column = plan.table("tickets").column("TKT-Actual Response Date")
    formats = {evidence.format: evidence.count for evidence in column.profile.formats}
    assert formats["dmy_hm"] == 9
    assert column.conversion.formats == ("iso_datetime", "dmy_hm")
    assert (column.conversion.day_first, column.conversion.day_first_assumed) == (True, False)
    assert column.confidence == 1.0


def test_demo_month_first_column_is_decided_from_evidence(demo):
    column = demo[0].table("tickets").column("Chg-Planned Start Date")
    assert column.conversion.formats == ("mdy_hm_ampm",)
    assert (column.conversion.day_first, column.conversion.day_first_assumed) == (False, False)


def test_demo_keys_equal_the_truth(demo):
    plan, truth = demo
    for table, key in truth["key_columns"].items():
        assert plan.table(table).key_columns == ((key,) if key else ())


def test_demo_null_markers_and_empty_strings_are_counted_and_nulled(demo):
    plan, _ = demo
    column = plan.table("tickets").column("TKT-SLA Closure Date")
    assert sum(column.profile.null_markers.values()) >= 1 and column.profile.empty_strings >= 1
    assert "N/A" in column.conversion.null_markers and "" in column.conversion.null_markers
    assert column.confidence == 1.0


# --- inference rules on files built here ---------------------------------------------------------


def test_all_ambiguous_slash_dates_use_the_configured_default_and_say_so(tmp_path):
    path = snapshot(tmp_path / "a.db", "CREATE TABLE t (d TEXT)", [("01/02/2025",), ("03/04/2025",)])
    column = column_plan(path, "d")
    assert column.conversion.formats == ("dmy",)
    assert (column.conversion.day_first, column.conversion.day_first_assumed) == (True, True)
    assert "ASSUMED" in column.reason
    month_first = column_plan(path, "d", ProfileSettings(day_first_default=False))
    assert month_first.conversion.formats == ("mdy",) and month_first.conversion.day_first_assumed


def test_conflicting_day_month_evidence_keeps_the_majority_and_reports_the_rest(tmp_path):
    rows = [(f"{day}/01/2025",) for day in range(25, 30)] + [("01/28/2025",)]
    column = column_plan(snapshot(tmp_path / "c.db", "CREATE TABLE t (d TEXT)", rows), "d")
    assert column.conversion.day_first is True and "conflicting" in column.reason
    assert column.profile.counterexamples == ("01/28/2025",)
    assert column.confidence == pytest.approx(5 / 6)


def test_numbers_become_dates_only_in_date_named_columns(tmp_path):
    epochs = [(1747730520 + n * 3600,) for n in range(5)]
    path = snapshot(tmp_path / "e.db", "CREATE TABLE t (event_id INTEGER, created_time INTEGER)", [(e[0], e[0]) for e in epochs])
    plan = profile_database(path).table("t")
    assert plan.column("event_id").target_type == "bigint"
    assert plan.column("created_time").target_type == "timestamp"
    assert plan.column("created_time").conversion.formats == ("epoch_s",)


def test_excel_serial_days_in_a_date_column(tmp_path):
    column = column_plan(snapshot(tmp_path / "x.db", "CREATE TABLE t (due_date REAL)", [(45797.0,), (45798.0,)]), "due_date")
    assert (column.target_type, column.conversion.formats) == ("date", ("excel_serial",))


def test_offsets_make_timestamptz(tmp_path):
    rows = [("2025-05-20T08:42:00Z",), ("2025-05-20 10:00:00+02:00",), ("2025-05-21 09:00:00",)]
    column = column_plan(snapshot(tmp_path / "z.db", "CREATE TABLE t (at TEXT)", rows), "at")
    assert column.target_type == "timestamptz"
    assert set(column.conversion.formats) == {"iso_datetime", "iso_datetime_tz"}


@pytest.mark.parametrize(
    "values, target, formats",
    [
        (["12", "7", " 42 "], "bigint", ("int_text",)),
        (["3000000.0", "12.0"], "bigint", ("decimal_text",)),
        ([3000000.0, 12.0], "bigint", ("real",)),
        (["87.50%", "100.00%"], "numeric", ("percent",)),
        (["1.234,5", "12,5"], "numeric", ("thousands_dot", "decimal_comma")),
        (["1,234.50", "99.10"], "numeric", ("decimal_text", "thousands_comma")),
        ([1.5, 2.25], "double precision", ("real",)),
        (["Yes", "No", "yes"], "boolean", ("yes_no",)),
        (["Y", "N"], "boolean", ("y_n",)),
        (["true", "FALSE"], "boolean", ("true_false",)),
        (["00123", "00456"], "text", ("text", "integer_as_text", "real_as_text", "blob_as_text")),
        (["10248/11", "10249/12"], "text", ("text", "integer_as_text", "real_as_text", "blob_as_text")),
    ],
)
def test_representation_decisions(tmp_path, values, target, formats):
    column = column_plan(snapshot(tmp_path / "r.db", "CREATE TABLE t (v)", [(v,) for v in values]), "v")
    assert (column.target_type, column.conversion.formats) == (target, formats)
    assert column.confidence == 1.0


def test_one_zero_integers_are_boolean_only_when_the_name_says_so(tmp_path):
    path = snapshot(tmp_path / "b.db", "CREATE TABLE t (is_active INTEGER, quantity INTEGER)", [(1, 1), (0, 0), (1, 0)])
    plan = profile_database(path).table("t")
    assert plan.column("is_active").target_type == "boolean"
    assert plan.column("quantity").target_type == "bigint"


def test_nulls_empty_strings_whitespace_and_markers_are_counted_separately(tmp_path):
    rows = [(None,), ("",), ("  ",), ("N/A",), ("null",), ("-",), ("2.5",), ("3.5",), ("4",), ("5.25",)]
    column = column_plan(snapshot(tmp_path / "n.db", "CREATE TABLE t (hours TEXT)", rows), "hours")
    profile = column.profile
    assert (profile.nulls, profile.empty_strings, profile.whitespace_only) == (1, 1, 1)
    assert profile.null_markers == {"NULL": 1, "N/A": 1, "-": 1}
    assert column.target_type == "numeric" and column.confidence == 1.0
    assert (profile.convertible, profile.unconvertible) == (4, 0)


def test_confidence_is_the_converting_share_with_at_most_five_counterexamples(tmp_path):
    rows = [(f"2025-01-{day:02d}",) for day in range(1, 29)] + [(f"bad{n}",) for n in range(7)]
    column = column_plan(snapshot(tmp_path / "k.db", "CREATE TABLE t (d TEXT)", rows), "d")
    assert column.target_type == "date"
    assert column.confidence == pytest.approx(28 / 35)
    assert len(column.profile.counterexamples) == 5
    assert all(value.startswith("bad") for value in column.profile.counterexamples)


def test_a_column_below_the_typed_threshold_stays_text(tmp_path):
    rows = [(f"2025-01-{day:02d}",) for day in range(1, 11)] + [(f"word{n}",) for n in range(10)]
    column = column_plan(snapshot(tmp_path / "w.db", "CREATE TABLE t (d TEXT)", rows), "d")
    assert column.target_type == "text" and "50.00%" in column.reason


def test_text_evidence_nul_crlf_length(tmp_path):
    rows = [("a\x00b",), ("line1\r\nline2",), ("plain",)]
    column = column_plan(snapshot(tmp_path / "t.db", "CREATE TABLE t (note TEXT)", rows), "note")
    assert (column.profile.nul_bytes, column.profile.crlf, column.profile.max_length) == (1, 1, 12)
    assert column.conversion.strip_nul and column.conversion.normalize_newlines


def test_key_is_an_id_named_column_that_is_unique_and_complete(tmp_path):
    rows = [(1, "a", 10), (2, "b", 10), (3, "c", None)]
    path = snapshot(tmp_path / "k.db", "CREATE TABLE t (ticket_id INTEGER, name TEXT, parent_id INTEGER)", rows)
    plan = profile_database(path).table("t")
    assert plan.key_columns == ("ticket_id",)
    assert plan.column("ticket_id").unique and not plan.column("parent_id").unique


def test_key_survives_whole_duplicate_rows_but_not_conflicting_ones(tmp_path):
    duplicated = snapshot(tmp_path / "d.db", "CREATE TABLE t (comment_id TEXT, body TEXT)", [("1", "x"), ("2", "y"), ("2", "y")])
    assert profile_database(duplicated).table("t").key_columns == ("comment_id",)
    conflicting = snapshot(tmp_path / "c.db", "CREATE TABLE t (comment_id TEXT, body TEXT)", [("1", "x"), ("2", "y"), ("2", "z")])
    assert profile_database(conflicting).table("t").key_columns == ()


def test_large_tables_are_sampled_but_null_counts_cover_every_row(tmp_path):
    rows = [(n, "" if n % 10 == 0 else f"2025-01-{n % 28 + 1:02d}") for n in range(5_000)]
    path = snapshot(tmp_path / "s.db", "CREATE TABLE t (id INTEGER, d TEXT)", rows)
    plan = profile_database(path, ProfileSettings(sample_above_rows=1_000, sample_rows=500, seed=3)).table("t")
    assert plan.sampled
    column = plan.column("d")
    assert column.profile.rows == 5_000 and column.profile.empty_strings == 500
    assert column.target_type == "date"
    assert plan.column("id").unique
    assert 300 < column.profile.convertible + column.profile.unconvertible < 700


# --- the whole-table frames handed to the caller ------------------------------------------------


def test_each_table_read_whole_is_handed_over_once_exactly_as_read_rows_returns_it(tmp_path):
    from servicedesk_etl.profiling.values import read_rows

    path = tmp_path / "two.db"
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE a ("Ticket ID" INTEGER, note TEXT, hours)')
    conn.executemany("INSERT INTO a VALUES (?, ?, ?)", [(n, f"n{n % 3}", n / 2 if n % 4 else "x") for n in range(50)])
    conn.execute("CREATE TABLE b (blob BLOB)")
    conn.executemany("INSERT INTO b VALUES (?)", [(b"\x00\x01",), (None,)])
    conn.commit()
    conn.close()
    handed: list[tuple[str, object]] = []
    profile_database(path, on_table=lambda table, raw: handed.append((table, raw)))
    assert [table for table, _ in handed] == ["a", "b"]
    source = open_readonly(path)
    for table, raw in handed:
        assert raw.equals(read_rows(source, table)), table


def test_a_table_too_big_for_one_read_is_handed_over_a_few_columns_at_a_time_each_column_once(
    tmp_path, monkeypatch
):
    from servicedesk_etl.profiling import infer
    from servicedesk_etl.profiling.values import ROWID, read_rows

    path = tmp_path / "wide.db"
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE big ("Ticket ID" INTEGER, created TEXT, amount TEXT, flag TEXT, note, id2 INTEGER)')
    conn.executemany("INSERT INTO big VALUES (?, ?, ?, ?, ?, ?)", [
        (n, f"{n % 28 + 1:02d}/05/2025", f"{n},5" if n % 3 else "", "Yes" if n % 2 else "No", n / 3 if n % 5 else b"x", n // 2)
        for n in range(60)
    ])
    conn.execute("CREATE TABLE small (x TEXT)")
    conn.execute("INSERT INTO small VALUES ('1'), ('2')")
    conn.commit()
    conn.close()
    whole_plan = profile_database(path)
    monkeypatch.setattr(infer, "CELLS_PER_READ", 130)  # 60 rows: two columns a read
    handed: list[tuple[str, object]] = []
    grouped_plan = profile_database(path, on_table=lambda table, raw: handed.append((table, raw)))
    source = open_readonly(path)
    big = read_rows(source, "big")
    groups = [raw.columns[1:] for table, raw in handed if table == "big"]
    assert groups == [["Ticket ID", "created"], ["amount", "flag"], ["note", "id2"]]
    for table, raw in handed:
        expected = big.select(ROWID, *raw.columns[1:]) if table == "big" else read_rows(source, table)
        assert raw.equals(expected), (table, raw.columns)
    assert [table for table, _ in handed].count("small") == 1
    assert grouped_plan.tables == whole_plan.tables
    assert profile_database(path).tables == whole_plan.tables


def test_a_sampled_table_is_not_handed_over(tmp_path):
    path = snapshot(tmp_path / "s.db", "CREATE TABLE t (n INTEGER)", [(n,) for n in range(500)])
    handed: list[str] = []
    settings = ProfileSettings(sample_above_rows=100, sample_rows=50)
    plan = profile_database(path, settings, on_table=lambda table, raw: handed.append(table))
    assert plan.table("t").sampled and handed == []


@pytest.mark.parametrize(
    ("rows", "key"),
    [
        ([(1, "a", "x"), (1, "a", "x"), (2, "b", "y"), (3, "c", "z")], ("Ticket ID",)),  # exact duplicates only
        ([(1, "a", "x"), (1, "a", "x"), (2, "b", "y"), (2, "b", "other")], ()),  # a later repeat differs, last column
        ([(1, "a", "x"), (1, "b", "x"), (2, "b", "y"), (3, "c", "z")], ()),  # the first repeat differs at once
        ([(2, "b", "y"), (1, "a", "x"), (2, "b", "y"), (1, "a", "w")], ()),  # the first repeat agrees, another not
    ],
    ids=["duplicate-rows", "later-repeat-differs", "first-repeat-differs", "first-agrees-second-not"],
)
@pytest.mark.parametrize("in_parts", [False, True], ids=["whole", "in_parts"])
def test_an_id_column_repeated_only_by_whole_duplicate_rows_is_the_key(tmp_path, monkeypatch, rows, key, in_parts):
    from servicedesk_etl.profiling import infer

    path = snapshot(tmp_path / "k.db", 'CREATE TABLE t ("Ticket ID" INTEGER, status TEXT, note TEXT)', rows)
    if in_parts:
        monkeypatch.setattr(infer, "CELLS_PER_READ", 6)
    table = profile_database(path).table("t")
    assert table.key_columns == key
    reason = table.column("Ticket ID").reason
    assert ("exact duplicate row(s) are removed" in reason) == bool(key)


def test_row_counts_hold_whatever_the_rowids(tmp_path):
    from servicedesk_etl.profiling.values import rowid_span

    path = tmp_path / "rowids.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE sparse (n INTEGER)")
    conn.executemany("INSERT INTO sparse (rowid, n) VALUES (?, ?)", [(k * 1000, k) for k in range(1, 51)])
    conn.execute("CREATE TABLE far_apart (n INTEGER)")  # two rows whose rowids span more than a sample
    conn.executemany("INSERT INTO far_apart (rowid, n) VALUES (?, ?)", [(-(2**62), 1), (2**62, 2)])
    conn.execute('CREATE TABLE shadowed ("rowid" TEXT, n INTEGER)')  # a column named rowid
    conn.executemany("INSERT INTO shadowed VALUES (?, ?)", [("z", 1), ("a", 2), ("m", 3)])
    conn.execute("CREATE TABLE keyed (k TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID")
    conn.executemany("INSERT INTO keyed VALUES (?, ?)", [("a", 1), ("b", 2)])
    conn.execute("CREATE TABLE empty (n INTEGER)")
    conn.commit()
    settings = ProfileSettings(sample_above_rows=100, sample_rows=50)
    plan = profile_database(path, settings)
    for table in plan.tables:
        assert table.row_count == conn.execute(f'SELECT count(*) FROM "{table.name}"').fetchone()[0], table.name
        assert not table.sampled, table.name
    assert rowid_span(conn, "sparse", ["n"]) == 49_001
    assert rowid_span(conn, "shadowed", ["rowid", "n"]) == 3
    assert rowid_span(conn, "keyed", ["k", "n"]) is None
    assert rowid_span(conn, "empty", ["n"]) == 0
    conn.close()


@pytest.mark.parametrize("budget", [2**30, 0], ids=["room", "no-room"])
def test_reading_goes_on_while_earlier_tables_wait_to_be_decided_within_a_memory_budget(
    tmp_path, monkeypatch, budget
):
    import threading

    from servicedesk_etl.profiling import infer

    path = tmp_path / "four.db"
    conn = sqlite3.connect(path)
    for table in ("a", "b", "c", "d"):
        conn.execute(f"CREATE TABLE {table} (n INTEGER, note TEXT)")
        conn.executemany(f"INSERT INTO {table} VALUES (?, ?)", [(n, f"n{n % 7}") for n in range(100)])
    conn.commit()
    conn.close()
    whole = profile_database(path)
    release = threading.Event()
    decide = infer._decide_whole

    def slow_first(table, *args):
        if table == "a":
            assert release.wait(timeout=30)
        return decide(table, *args)

    def read(table, raw):
        events.append(f"read {table}")
        if table == ("c" if budget else "b"):
            release.set()  # with room, "a" is decided only once "c" is read: reading must not wait for it

    events: list[str] = []
    monkeypatch.setattr(infer, "_decide_whole", slow_first)
    monkeypatch.setattr(infer, "FRAMES_AWAITING_DECISION", budget)
    plan = profile_database(path, on_table=read, on_plan=lambda table: events.append(f"decided {table.name}"))
    assert plan.tables == whole.tables  # in the tables' order
    reads = [event for event in events if event.startswith("read")]
    assert reads == ["read a", "read b", "read c", "read d"]
    assert [event for event in events if event.startswith("decided")] == ["decided a", "decided b", "decided c", "decided d"]
    if budget:
        assert events.index("read c") < events.index("decided a")
    else:  # no room: "c" is read only once "a" is decided, while the newest, "b", may still be decided
        assert events.index("decided a") < events.index("read c")


@pytest.mark.parametrize("layout", ["whole", "in_parts", "sampled"])
def test_each_table_plan_is_announced_once_as_soon_as_it_is_decided(tmp_path, monkeypatch, layout):
    from servicedesk_etl.profiling import infer

    path = tmp_path / "three.db"
    conn = sqlite3.connect(path)
    for table in ("a", "b", "c"):
        conn.execute(f'CREATE TABLE {table} ("{table} id" INTEGER, created TEXT, note TEXT)')
        conn.executemany(f"INSERT INTO {table} VALUES (?, ?, ?)", [(n, f"2025-05-{n % 28 + 1:02d}", f"n{n}") for n in range(200)])
    conn.commit()
    conn.close()
    settings = ProfileSettings(sample_above_rows=100, sample_rows=50) if layout == "sampled" else ProfileSettings()
    if layout == "in_parts":
        monkeypatch.setattr(infer, "CELLS_PER_READ", 300)
    events: list[tuple[str, str]] = []
    plan = profile_database(
        path,
        settings,
        on_table=lambda table, raw: events.append(("read", table)),
        on_plan=lambda table: events.append(("decided", table)),  # type: ignore[arg-type]
    )
    announced = [table for kind, table in events if kind == "decided"]
    assert announced == list(plan.tables)  # the very plans the profile ends with, in its order
    names = [(kind, table if kind == "read" else table.name) for kind, table in events]
    for table in ("a", "b", "c"):
        *reads, last = [event for event in names if event[1] == table]
        assert last == ("decided", table)  # once, after every read of the table
        assert set(reads) <= {("read", table)}
        assert len(reads) == {"whole": 1, "in_parts": 3, "sampled": 0}[layout]  # a sampled table is not handed over


def test_columns_planned_together_get_the_plans_they_get_alone(tmp_path):
    from servicedesk_etl.profiling.infer import plan_column, plan_columns
    from servicedesk_etl.sqlite_source import table_columns

    path = tmp_path / "mixed.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (created TEXT, amount TEXT, flag TEXT, note TEXT, empty TEXT, data BLOB, id INTEGER)")
    rows = [
        (f"2025-05-{n % 28 + 1:02d} 08:00:00" if n % 9 else "20/05/2025 8:42", f"{n},5" if n % 2 else "", "Yes" if n % 3 else "no",
         "a\r\nb" if n % 7 == 0 else f"note {n % 4}", None, bytes([n % 256]), n)
        for n in range(60)
    ]
    conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()
    source = open_readonly(path)
    frame = read_table(source, "t")
    columns = table_columns(source, "t")
    settings = ProfileSettings()
    together = plan_columns([(column, frame[column.name], column.name) for column in columns], settings)
    alone = [plan_column(column, frame[column.name], column.name, settings) for column in columns]
    assert together == alone
    assert [plan.target_type for plan in together] == ["timestamp", "numeric", "boolean", "text", "text", "bytea", "bigint"]
