"""A FrameSource over the raw frames of a SQLite file answers every question exactly as SqliteSource does."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from servicedesk_etl.demo_data import generate_demo_snapshot
from servicedesk_etl.pipeline import GateQuestions, PipelineSettings, rule_packs
from servicedesk_etl.profiling import frame_source as frame_source_module
from servicedesk_etl.profiling import sources as m
from servicedesk_etl.profiling.frame_source import (
    FrameSource,
    UnsupportedSchema,
    frame_preparer,
    frame_source,
    sqlite_schema,
)
from servicedesk_etl.profiling.infer import ProfileSettings, profile_database
from servicedesk_etl.profiling.rules import evaluate_rules
from servicedesk_etl.profiling.score import score_quality
from servicedesk_etl.profiling.sources import DEFAULT_NULL_MARKERS, Link, Measure, OrphanCount, sqlite_source
from servicedesk_etl.profiling.values import read_rows
from servicedesk_etl.sqlite_source import list_tables, open_readonly, sqlite_affinity
from servicedesk_etl_tests.conftest import CORPUS_FILES

NOW = datetime(2026, 1, 15, 12, 0, 0)


class RecordingSource:
    """A real SqliteSource that records every question asked of it, with its answer."""

    def __init__(self, path: Path) -> None:
        self.inner = sqlite_source(path)
        self.engine, self.label, self.uses_pg_names = self.inner.engine, self.inner.label, False
        self.calls: list[tuple[str, Any, Any]] = []
        self._lock = threading.Lock()

    def connected(self) -> AbstractContextManager[Any]:
        return self.inner.connected()

    def tables(self) -> tuple[str, ...]:
        return self.inner.tables()

    def columns(self, table: str) -> tuple[str, ...]:
        return self.inner.columns(table)

    def measure(
        self, table: str, measures: Iterable[Measure], null_markers: Sequence[str] = DEFAULT_NULL_MARKERS
    ) -> dict[Measure, int]:
        asked = list(measures)
        answer = self.inner.measure(table, asked, null_markers)
        self._record("measure", (table, tuple(asked), tuple(null_markers)), answer)
        return answer

    def duplicate_rows(self, table: str) -> int:
        answer = self.inner.duplicate_rows(table)
        self._record("duplicate_rows", table, answer)
        return answer

    def orphans(self, link: Link, null_markers: Sequence[str] = DEFAULT_NULL_MARKERS) -> OrphanCount:
        answer = self.inner.orphans(link, null_markers)
        self._record("orphans", (link, tuple(null_markers)), answer)
        return answer

    def _record(self, kind: str, question: Any, answer: Any) -> None:
        with self._lock:
            self.calls.append((kind, question, answer))


def raw_frames(path: Path) -> dict[str, pl.DataFrame]:
    conn = open_readonly(path)
    try:
        return {table: read_rows(conn, table) for table in list_tables(conn)}
    finally:
        conn.close()


def prepared_source(path: Path) -> FrameSource:
    """A source prepared table by table from the frames as the profiler hands them on, then served them."""
    frames = raw_frames(path)
    preparer = frame_preparer(path)
    assert preparer is not None
    for table, frame in frames.items():
        preparer.add(table, frame)
    return preparer.finish(frames)


def prepared_in_groups_source(path: Path) -> FrameSource:
    """A source prepared from frames of three columns each (every row), as a wide, long table is handed on."""
    frames = raw_frames(path)
    preparer = frame_preparer(path)
    assert preparer is not None
    for table, frame in frames.items():
        names = frame.columns[1:]
        for start in range(0, len(names), 3):
            preparer.add(table, frame.select(frame.columns[0], *names[start : start + 3]))
    return preparer.finish(frames)


def counted_ahead_source(path: Path) -> FrameSource:
    """A source prepared as the profile step prepares it: each table's gate questions counted as soon
    as its plan is decided, while the next table is read."""
    frames = raw_frames(path)
    preparer = frame_preparer(path)
    assert preparer is not None
    settings = ProfileSettings()
    on_plan = GateQuestions(rule_packs(PipelineSettings()), None, now=NOW).asked_ahead(preparer, settings)
    profile_database(path, settings, on_table=preparer.add, on_plan=on_plan)
    return preparer.finish(frames)


def loaded_source(path: Path) -> FrameSource:
    return frame_source(path, raw_frames(path))


SOURCES = {
    "loaded": loaded_source,
    "prepared": prepared_source,
    "prepared_in_groups": prepared_in_groups_source,
    "counted_ahead": counted_ahead_source,
}


def replay(source: FrameSource, calls: list[tuple[str, Any, Any]]) -> list[tuple[str, Any, Any]]:
    """Each recorded question asked again of `source`, with the answer it gives."""
    answers = []
    for kind, question, _ in calls:
        if kind == "measure":
            table, measures, markers = question
            answers.append((kind, question, source.measure(table, measures, markers)))
        elif kind == "duplicate_rows":
            answers.append((kind, question, source.duplicate_rows(question)))
        else:
            link, markers = question
            answers.append((kind, question, source.orphans(link, markers)))
    return answers


def comparable(document: dict[str, Any]) -> dict[str, Any]:
    plain = json.loads(json.dumps(document, sort_keys=True, default=str))
    plain.pop("source", None)
    return plain


def assert_answers_like_sqlite(path: Path) -> None:
    plan = profile_database(path)
    packs = rule_packs(PipelineSettings())
    recorder = RecordingSource(path)
    score = score_quality(recorder, plan)
    rules = evaluate_rules(recorder, plan, packs, now=NOW)
    assert recorder.calls, "the scorer and the rule engine asked nothing"

    for make in SOURCES.values():
        frames = make(path)
        assert frames.tables() == recorder.tables()
        assert all(frames.columns(table) == recorder.columns(table) for table in recorder.tables())
        assert replay(frames, recorder.calls) == recorder.calls
        assert comparable(score_quality(frames, plan).to_dict()) == comparable(score.to_dict())
        assert comparable(evaluate_rules(frames, plan, packs, now=NOW).to_dict()) == comparable(rules.to_dict())


@pytest.fixture(params=["copied", "on_file"])
def counting(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every equality test twice: columns copied into distinct tables, and every one-field column,
    however short, counted on the file itself (as long, nearly unique columns are)."""
    if request.param == "on_file":
        monkeypatch.setattr(frame_source_module, "_ON_FILE_MIN_ROWS", 0)
        monkeypatch.setattr(frame_source_module, "_ON_FILE_SHARE", 0.0)
    return request.param


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "demo.sqlite"
    generate_demo_snapshot(path, scale=0.05)
    return path


def test_demo_snapshot_answers_equal_sqlite_source(demo: Path, counting: str) -> None:
    assert_answers_like_sqlite(demo)


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_corpus_file_answers_equal_sqlite_source(name: str, corpus_copy: Any, counting: str) -> None:
    assert_answers_like_sqlite(corpus_copy(name))


# --- awkward values, every measure --------------------------------------------------------------

AWKWARD_VALUES: list[Any] = [
    None, "", " ", "\t\r\n", "NULL", "null", "Null", " n/a ", "N/A ", "nan", "NaN", "None", "NONE", "-", "?", "na",
    "nul\x00byte", "\x00", "line\r\nbreak", "cr\ronly", "caf\u00e9", "\u00a0", "\ufeff",
    b"\x96 dash", b"plain bytes", b"", b"\x00",
    1, 1.0, "1", "01", " 1", "1 ", "+1", "-1", "1.", ".5", "1.5", "1e3", "1,5", "87.50%", "3000000.0", 3000000.0,
    0, 0.0, -0.0, "0", 2**63 - 1, -(2**63), 9007199254740993, 2.0**63, 1e300, -1.5, 24, 24.0, 24.5, "24", 25,
    "123456789012345678", "1234567890123456789",
    "2025-05-20 08:42:00", "2025-05-20T08:42:00", "2025-05-20 08:42:00.123", "2025-05-20 08:42:00.5x",
    "2025-05-20", "2025-02-30", "2025-02-30 10:00:00", "2025-05-20 08:42:00+02:00", "2025-05-20 08:42:00 +02:00",
    "2025-05-20T08:42:00Z", "2025-05-20 08:42:00-05:30", "2019-12-31 23:59:59", "2030-01-01", "20/05/2025 8:42",
    "2025-13-45", "9999-99-99 garbage", "2025-05-20abc", "0000-00-00", " 2025-05-20", "2025-05-20 ",
    "yes", "Y", "true", "Closed", " closed ", "CLOSED",
]  # fmt: skip

DECLARED_TYPES = ["", "TEXT", "INTEGER", "REAL", "NUMERIC", "TIMESTAMP", "BOOLEAN", "VARCHAR(20)", "BLOB", "DATE"]
TARGETS = ["bigint", "numeric", "double precision", "boolean", "date", "timestamp", "timestamptz", "text", "bytea"]


def build_awkward(path: Path) -> Path:
    conn = sqlite3.connect(path)
    columns = ", ".join(f'"c {index} {declared}" {declared}' for index, declared in enumerate(DECLARED_TYPES))
    conn.execute(f'CREATE TABLE "awkward table" ({columns}, "status" TEXT, "id" INTEGER, "ref" TEXT)')
    holes = ", ".join("?" for _ in DECLARED_TYPES)
    for position, value in enumerate(AWKWARD_VALUES):
        status = ["Closed", " closed ", "open", None][position % 4]
        ref = [str(position % 7), f"0{position % 5}", "x", None][position % 4]
        conn.execute(f'INSERT INTO "awkward table" VALUES ({holes}, ?, ?, ?)',
                     [value] * len(DECLARED_TYPES) + [status, position % 11, ref])  # fmt: skip
    # text that is not valid UTF-8, stored as TEXT (not as a blob)
    conn.execute(f'INSERT INTO "awkward table" VALUES ({holes}, ?, ?, ?)',
                 [b"bad \x96 text"] * len(DECLARED_TYPES) + [None, -1, "3"])  # fmt: skip
    conn.execute(f'UPDATE "awkward table" SET {", ".join(f"{name} = CAST({name} AS TEXT)" for name in awkward_names())}'
                 ' WHERE "id" = -1')  # fmt: skip
    # duplicate rows that differ only as 1 vs 1.0 (equal to SQLite) and as 1 vs '1' (not equal)
    conn.execute('CREATE TABLE "dups" ("a", "b" REAL, "c" TEXT)')
    conn.executemany('INSERT INTO "dups" VALUES (?, ?, ?)', [
        (1, 1.0, "x"), (1.0, 1, "x"), ("1", 1.0, "x"), (-0.0, 0.0, None), (0, -0.0, None), (b"x", 2.5, "x"),
        ("x", 2.5, "x"), (b"x", 2.5, "x"), (2**53 + 1, 2.0**53, "y"), (2.0**53, 2.0**53, "y"), (None, None, None),
        (None, None, None),
    ])  # fmt: skip
    conn.execute('CREATE TABLE "nulls" ("a", "b" TEXT)')
    conn.executemany('INSERT INTO "nulls" VALUES (?, ?)', [(None, None)] * 3)
    wide_columns = ", ".join(f"w{i}" for i in range(12))
    conn.execute(f'CREATE TABLE "wide" ({wide_columns})')
    wide_rows = [[None] * 9 + [i % 3, "a", 1.0 if i % 2 else 1] for i in range(10)]
    conn.executemany(f'INSERT INTO "wide" VALUES ({", ".join("?" * 12)})', wide_rows)
    conn.commit()
    conn.close()
    return path


def awkward_names() -> list[str]:
    return [f'"c {index} {declared}"' for index, declared in enumerate(DECLARED_TYPES)]


def every_measure(column: str, other: str) -> list[Measure]:
    measures = [Measure(m.ROWS)]
    for kind in (m.MISSING, m.BLANKS, m.NUMERIC, m.DATE_PARSEABLE, m.TEXT_VALUES, m.NUL_BYTES, m.CRLF,
                 m.INVALID_UTF8, m.DISTINCT_KEYS):  # fmt: skip
        measures.append(Measure(kind, column))
    measures += [Measure(m.CONFORMING, column, (target,)) for target in TARGETS]
    measures += [
        Measure(m.INTEGER_IN_RANGE, column, (1, None)),
        Measure(m.INTEGER_IN_RANGE, column, (0, 24)),
        Measure(m.VALUE_IN_RANGE, column, (0, 24, False, True)),
        Measure(m.VALUE_IN_RANGE, column, (None, 1.5, True, False)),
        Measure(m.VALUE_EQUALS, column, (0,)),
        Measure(m.VALUE_EQUALS, column, (1.0,)),
        Measure(m.VALUE_EQUALS, column, ("1",)),  # text bounds compare by the column's affinity
        Measure(m.VALUE_IN_RANGE, column, ("0", "24", True, True)),
        Measure(m.DATE_IN_RANGE, column, ("2020-01-01 00:00:00", "2026-02-14 12:00:00")),
        Measure(m.COMPARABLE, column, (other,)),
        Measure(m.ORDERED, column, (other,)),
        Measure(m.CONDITION_ROWS, column, ("Closed", "1")),
        Measure(m.MISSING_WHEN, column, ("status", "Closed")),
    ]
    return measures


@pytest.fixture
def awkward(tmp_path: Path) -> Path:
    return build_awkward(tmp_path / "awkward.sqlite")


@pytest.mark.parametrize("make", SOURCES.values(), ids=SOURCES.keys())
def test_awkward_values_are_counted_as_sqlite_counts_them(awkward: Path, make: Any, counting: str) -> None:
    sqlite, frames = sqlite_source(awkward), make(awkward)
    names = [name.strip('"') for name in awkward_names()]
    for index, column in enumerate(names):
        other = names[(index + 5) % len(names)]
        measures = every_measure(column, other)
        expected = sqlite.measure("awkward table", measures)
        assert frames.measure("awkward table", measures) == expected, column
        for measure in measures:  # asked alone, CONFORMING is judged without the cell class
            assert frames.measure("awkward table", [measure]) == sqlite.measure("awkward table", [measure]), measure


def test_awkward_values_include_what_they_claim(awkward: Path) -> None:
    counts = frame_source(awkward, raw_frames(awkward)).measure(
        "awkward table", [Measure(m.INVALID_UTF8, "c 0 "), Measure(m.NUL_BYTES, "c 0 "), Measure(m.CRLF, "c 1 TEXT")]
    )
    assert counts[Measure(m.INVALID_UTF8, "c 0 ")] == 2  # the 0x96 blob and the 0x96 text
    assert counts[Measure(m.NUL_BYTES, "c 0 ")] == 2
    assert counts[Measure(m.CRLF, "c 1 TEXT")] == 2  # "\t\r\n" and "line\r\nbreak"


@pytest.mark.parametrize("make", SOURCES.values(), ids=SOURCES.keys())
def test_duplicate_rows_compare_as_sqlite_distinct(awkward: Path, make: Any, counting: str) -> None:
    frames = make(awkward)
    assert frames.duplicate_rows("dups") == sqlite_source(awkward).duplicate_rows("dups")
    # 1 = 1.0, -0.0 = 0, the blob repeated, the NULL row repeated; '1' <> 1, 2**53 + 1 <> 2.0**53, b'x' <> 'x'
    assert frames.duplicate_rows("dups") == 4
    assert frames.duplicate_rows("awkward table") == sqlite_source(awkward).duplicate_rows("awkward table")
    assert frames.duplicate_rows("nulls") == sqlite_source(awkward).duplicate_rows("nulls") == 2
    assert frames.duplicate_rows("wide") == sqlite_source(awkward).duplicate_rows("wide") == 7  # 3 rows, 1 = 1.0


@pytest.mark.parametrize("make", SOURCES.values(), ids=SOURCES.keys())
@pytest.mark.parametrize("ignore", [(), ("0",), ("3", "x")])
def test_orphans_compare_keys_as_sqlite_does(awkward: Path, ignore: tuple[str, ...], make: Any, counting: str) -> None:
    frames, sqlite = make(awkward), sqlite_source(awkward)
    for child, parent in [("ref", "id"), ("id", "ref"), ("c 0 ", "c 2 INTEGER"), ("c 3 REAL", "c 1 TEXT")]:
        link = Link("awkward table", child, "awkward table", parent, ignore)
        assert frames.orphans(link) == sqlite.orphans(link), link


# --- sharing and loading ------------------------------------------------------------------------


def test_concurrent_scorer_and_rule_engine_share_one_source(demo: Path) -> None:
    plan = profile_database(demo)
    expected_score = comparable(score_quality(sqlite_source(demo), plan).to_dict())
    expected_rules = comparable(evaluate_rules(sqlite_source(demo), plan, now=NOW).to_dict())
    source = frame_source(demo, raw_frames(demo))
    with ThreadPoolExecutor(max_workers=2) as pool:
        score = pool.submit(score_quality, source, plan)
        rules = pool.submit(lambda: evaluate_rules(source, plan, now=NOW))
        assert comparable(score.result().to_dict()) == expected_score
        assert comparable(rules.result().to_dict()) == expected_rules


def test_a_loader_is_asked_for_a_bounded_number_of_cells_at_a_time(demo: Path, monkeypatch: Any) -> None:
    budget = 3_000
    monkeypatch.setattr(frame_source_module, "_CELLS_PER_LOAD", budget)
    frames = raw_frames(demo)
    asked: list[tuple[str, tuple[str, ...]]] = []

    def load(table: str, columns: Sequence[str]) -> pl.DataFrame:
        asked.append((table, tuple(columns)))
        return frames[table].select(list(columns))

    plan = profile_database(demo)
    loaded = FrameSource(sqlite_schema(demo), load, label="loaded")
    score = score_quality(loaded, plan)
    rules = evaluate_rules(loaded, plan, now=NOW)
    assert comparable(score.to_dict()) == comparable(score_quality(sqlite_source(demo), plan).to_dict())
    assert comparable(rules.to_dict()) == comparable(evaluate_rules(sqlite_source(demo), plan, now=NOW).to_dict())
    assert {len(columns) for _, columns in asked} - {1, 2}, "no load ever batched columns"
    assert all(len(columns) <= 2 or len(columns) * frames[table].height <= budget for table, columns in asked)
    calls_after_first_score = len(asked)
    score_quality(loaded, plan)
    assert len(asked) == calls_after_first_score  # distinct values are kept; nothing is loaded twice


def test_a_prepared_source_loads_no_column_it_was_handed(demo: Path) -> None:
    frames = raw_frames(demo)
    asked: list[tuple[str, tuple[str, ...]]] = []

    def load(table: str, columns: Sequence[str]) -> pl.DataFrame:
        asked.append((table, tuple(columns)))
        return frames[table].select(list(columns))

    preparer = frame_preparer(demo)
    assert preparer is not None
    for table, frame in frames.items():
        preparer.add(table, frame)
    source = preparer.finish(load)
    plan = profile_database(demo)
    score_quality(source, plan)
    evaluate_rules(source, plan, now=NOW)
    # left to load: column pairs, and whole rows whose hashes repeat (to compare them exactly)
    widths = {table: len(columns) for table, columns in sqlite_schema(demo).items()}
    assert asked
    assert all(len(columns) in (2, widths[table]) for table, columns in asked), asked


@pytest.mark.parametrize("limits", [{"budget_bytes": 1}, {"max_rows": 0}], ids=["budget", "rows"])
def test_a_preparer_stops_at_its_limits_and_the_rest_is_built_when_measured(demo: Path, limits: Any) -> None:
    frames = raw_frames(demo)
    asked: list[tuple[str, tuple[str, ...]]] = []

    def load(table: str, columns: Sequence[str]) -> pl.DataFrame:
        asked.append((table, tuple(columns)))
        return frames[table].select(list(columns))

    preparer = frame_preparer(demo, **limits)
    assert preparer is not None
    for table, frame in frames.items():
        preparer.add(table, frame)
    source = preparer.finish(load)
    plan = profile_database(demo)
    assert comparable(score_quality(source, plan).to_dict()) == comparable(
        score_quality(sqlite_source(demo), plan).to_dict()
    )
    first, *rest = frames
    assert set(rest) <= {table for table, _ in asked}  # built when measured
    widths = {table: len(columns) for table, columns in sqlite_schema(demo).items()}
    first_prepared = all(len(columns) in (2, widths[first]) for table, columns in asked if table == first)
    assert first_prepared == ("budget_bytes" in limits)  # a budget is spent by the first frame; no frame fits 0 rows


def spy_on_counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tables of distinct values counted from now on (a call of the real counting function each)."""
    counted: list[str] = []
    count = frame_source_module._count_distinct

    def counting(conn: sqlite3.Connection, measures: list[Measure], *args: Any) -> dict[Measure, int]:
        counted.append(str(measures[0].column))
        return count(conn, measures, *args)

    monkeypatch.setattr(frame_source_module, "_count_distinct", counting)
    return counted


def spy_on(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[Any]:
    """The first argument after `self` of every call of a real method from now on."""
    calls: list[Any] = []
    method = getattr(owner, name)

    def spied(self: Any, first: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(first)
        return method(self, first, *args, **kwargs)

    monkeypatch.setattr(owner, name, spied)
    return calls


def test_gate_questions_are_what_the_scorer_and_the_rules_ask(demo: Path) -> None:
    plan = profile_database(demo)
    recorder = RecordingSource(demo)
    score_quality(recorder, plan)
    evaluate_rules(recorder, plan, rule_packs(PipelineSettings()), now=NOW)
    asked: dict[str, set[Measure]] = {}
    for kind, question, _ in recorder.calls:
        if kind == "measure":
            table, measures, _markers = question
            asked.setdefault(table, set()).update(measures)
    gate_questions = GateQuestions(rule_packs(PipelineSettings()), None, now=NOW)
    questions, links = gate_questions.questions(sqlite_source(demo), plan)
    assert {table: set(measures) for table, measures in questions.items()} == asked
    assert all(len(measures) == len(set(measures)) for measures in questions.values())  # each asked once
    assert links and len(links) == len(set(links))
    assert set(links) == {question[0] for kind, question, _ in recorder.calls if kind == "orphans"}


def test_counting_ahead_leaves_the_scorer_and_the_rules_nothing_to_count(
    demo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = spy_on_counting(monkeypatch)
    duplicates = spy_on(monkeypatch, FrameSource, "_duplicate_rows_uncached")
    orphans = spy_on(monkeypatch, FrameSource, "_orphans_uncached")
    source = counted_ahead_source(demo)
    assert counted and duplicates and orphans, "nothing was counted ahead"
    plan = profile_database(demo)
    for calls in (counted, duplicates, orphans):
        calls.clear()
    score = score_quality(source, plan)
    rules = evaluate_rules(source, plan, rule_packs(PipelineSettings()), now=NOW)
    assert counted == duplicates == orphans == []  # column pairs, duplicate rows and orphans included
    assert comparable(score.to_dict()) == comparable(score_quality(sqlite_source(demo), plan).to_dict())
    assert comparable(rules.to_dict()) == comparable(
        evaluate_rules(sqlite_source(demo), plan, rule_packs(PipelineSettings()), now=NOW).to_dict()
    )


def test_gate_questions_asked_once_leave_a_file_nothing_to_scan(tmp_path: Path, demo: Path) -> None:
    copy = tmp_path / "copy.sqlite"
    copy.write_bytes(demo.read_bytes())  # counts are shared per file version: a fresh file, none known
    plan = profile_database(copy)
    questions = GateQuestions(rule_packs(PipelineSettings()), None, now=NOW)
    questions.ask(lambda: sqlite_source(copy), plan)
    recorder = RecordingSource(copy)
    scans: list[str] = []
    scan = recorder.inner._measure_uncached
    recorder.inner._measure_uncached = lambda table, *args: scans.append(table) or scan(table, *args)  # type: ignore[method-assign]
    score_quality(recorder, plan)
    evaluate_rules(recorder, plan, questions.packs, now=NOW)
    assert [call for call in recorder.calls if call[0] == "measure"] and scans == []


def test_a_source_asked_before_it_is_served_says_so(demo: Path) -> None:
    unserved = FrameSource(sqlite_schema(demo), None)
    with pytest.raises(RuntimeError, match="before it was given frames"):
        unserved.measure("tickets", [Measure(m.MISSING, "TKT-Ticket ID")])
    unserved.serve(raw_frames(demo))
    assert unserved.measure("tickets", [Measure(m.ROWS)])[Measure(m.ROWS)] > 0


def test_close_frees_the_distinct_tables_and_answers_stay_the_same(awkward: Path) -> None:
    source = frame_source(awkward, raw_frames(awkward))
    measures = every_measure("c 4 NUMERIC", "c 5 TIMESTAMP")
    first = source.measure("awkward table", measures)
    source.close()
    assert source.measure("awkward table", measures) == first


@pytest.mark.parametrize(
    ("declared", "affinity"),
    [("INTEGER", "INTEGER"), ("BIGINT", "INTEGER"), ("VARCHAR(20)", "TEXT"), ("CLOB", "TEXT"), ("", "BLOB"),
     ("BLOB", "BLOB"), ("DOUBLE PRECISION", "REAL"), ("FLOAT", "REAL"), ("TIMESTAMP", "NUMERIC"),
     ("DECIMAL(10,2)", "NUMERIC"), ("BOOLEAN", "NUMERIC"), ("CHARINT", "INTEGER")],
)  # fmt: skip
def test_sqlite_affinity_follows_sqlite_rules(tmp_path: Path, declared: str, affinity: str) -> None:
    assert sqlite_affinity(declared) == affinity
    conn = sqlite3.connect(tmp_path / "a.sqlite")
    conn.execute(f'CREATE TABLE t ("v" {declared})')
    conn.execute("INSERT INTO t VALUES ('12')")
    stored = conn.execute("SELECT typeof(v) FROM t").fetchone()[0]
    conn.close()
    expected = {"INTEGER": "integer", "NUMERIC": "integer", "REAL": "real", "TEXT": "text", "BLOB": "text"}
    assert stored == expected[affinity]


def test_a_column_collation_is_refused_rather_than_answered_differently(tmp_path: Path) -> None:
    path = tmp_path / "nocase.sqlite"
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE t ("code" TEXT COLLATE NOCASE, "n" INTEGER)')
    conn.executemany("INSERT INTO t VALUES (?, ?)", [("a", 1), ("A", 1)])
    conn.commit()
    conn.close()
    assert sqlite_source(path).duplicate_rows("t") == 1  # NOCASE: 'a' and 'A' are one value
    with pytest.raises(UnsupportedSchema, match="NOCASE"):
        frame_source(path, raw_frames(path))


def test_strict_any_columns_keep_every_value_as_stored(tmp_path: Path) -> None:
    path = tmp_path / "strict.sqlite"
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE t ("v" ANY, "w" INTEGER) STRICT')
    conn.executemany("INSERT INTO t VALUES (?, ?)", [("1", 1), (1, 1), ("x", 2), (2.5, None), (None, 3)])
    conn.commit()
    conn.close()
    measures = [Measure(m.VALUE_EQUALS, "v", ("1",)), Measure(m.NUMERIC, "v"), Measure(m.TEXT_VALUES, "v")]
    assert sqlite_schema(path)["t"][0].declared_type == ""
    assert frame_source(path, raw_frames(path)).measure("t", measures) == sqlite_source(path).measure("t", measures)


def test_profile_step_builds_distinct_tables_while_profiling_and_scores_as_the_file_does(
    demo: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    from servicedesk_etl.pipeline import profile_step

    built_from_frames: list[tuple[str, ...]] = []
    built_when_measured: list[tuple[str, ...]] = []
    build, build_from = FrameSource._build, FrameSource._build_from

    def recording_build(self: FrameSource, table: str, units: list[tuple[str, ...]]) -> None:
        built_when_measured.extend(units)
        build(self, table, units)

    def recording_build_from(self: FrameSource, table: str, frame: pl.DataFrame, units: Any) -> int:
        units = list(units)
        built_from_frames.extend(units)
        return build_from(self, table, frame, units)

    monkeypatch.setattr(FrameSource, "_build", recording_build)
    monkeypatch.setattr(FrameSource, "_build_from", recording_build_from)
    settings = PipelineSettings(run_dry_run=False)
    outcome = profile_step(demo, tmp_path / "profile", dsn=None, settings=settings)
    plan = profile_database(demo)
    by_file = score_quality(sqlite_source(demo), plan)
    assert (outcome.artifact.quality_score, outcome.artifact.dimensions) == (by_file.score, dict(by_file.dimensions))
    assert outcome.metadata["rules_score"] == evaluate_rules(sqlite_source(demo), plan, rule_packs(settings)).score
    # every column, and every pair of columns the gates compare, built from the frames as they came
    assert {unit[0] for unit in built_from_frames} == {"column", "pair"}
    assert built_when_measured == []
