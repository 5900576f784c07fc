"""The quality score: the same code on the raw snapshot, the cleaned file and PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from servicedesk_etl.profiling.plan import SQLITE_DECLARED_TYPE, ColumnPlan, Conversion, Plan, TablePlan
from servicedesk_etl.profiling.rules import NOT_EVALUATED, RulePackError, evaluate_rules
from servicedesk_etl.profiling.score import DEFAULT_WEIGHTS, grade_for, postgres_source, score_quality, sqlite_source
from servicedesk_etl_tests.conftest import CORPUS_FILES

# table -> [(column, declared type in the snapshot, planned target type, PostgreSQL name)]
SCHEMA: dict[str, list[tuple[str, str, str, str]]] = {
    "tickets": [
        ("TKT-Ticket ID", "INTEGER", "bigint", "TKT-Ticket ID"),
        ("TKT-Parent ID", "REAL", "bigint", "TKT-Parent ID"),
        ("TKT-Title", "TEXT", "text", "TKT-Title"),
        ("TKT-Created Time", "TIMESTAMP", "timestamp", "TKT-Created Time"),
        ("TKT-Modified Time", "TIMESTAMP", "timestamp", "TKT-Modified Time"),
        ("TKT-Closure Date", "TEXT", "timestamp", "TKT-Closure Date"),
        ("TKT-SLA Met", "TEXT", "boolean", "TKT-SLA Met"),
        ("TKT-Actual SLA Achievement", "TEXT", "numeric", "TKT-Actual SLA Achievement"),
    ],
    "comments": [
        ("comment_id", "TEXT", "bigint", "comment_id"),
        ("ticket_id", "TEXT", "bigint", "ticket_id"),
        ("comment_text", "TEXT", "text", "comment_text_pg"),  # a renamed column, as for names > 63 bytes
        ("created_time", "TIMESTAMP", "timestamp", "created_time"),
    ],
}
PG_TYPES = {"bigint": "bigint", "text": "text", "timestamp": "timestamp", "boolean": "boolean", "numeric": "numeric"}


def make_plan(schema: dict[str, list[tuple[str, str, str, str]]] = SCHEMA, **row_counts: int) -> Plan:
    tables = tuple(
        TablePlan(table, table, row_counts.get(table, 0), tuple(
            ColumnPlan(name, pg, declared, target, Conversion(), 1.0) for name, declared, target, pg in cols
        ))
        for table, cols in schema.items()
    )  # fmt: skip
    return Plan("snapshot.db", "", "", tables)


def raw_rows() -> dict[str, list[tuple[Any, ...]]]:
    """Twenty tickets and thirty comments as the export writes them, with planted defects."""
    tickets = []
    for i in range(1, 21):
        closed = i % 4 != 0
        closure = (f"{i:02d}/05/2025 8:42" if i > 12 else f"2025-05-{i:02d} 08:42:00") if closed else ""
        tickets.append((
            i,
            3000000.0 if i % 5 == 0 else "",
            "Printer\x00 jam" if i == 7 else f"Ticket {i}",
            f"2025-04-{i:02d} 09:00:00",
            f"2025-04-{i:02d} 10:00:00",
            closure,
            "Yes" if i % 2 else "No",
            "87.50%",
        ))  # fmt: skip
    comments = [(str(5000 + j), str(j % 20 + 1), f"note {j}", f"2025-04-{j % 20 + 1:02d} 11:00:00") for j in range(29)]
    comments.append(comments[3])  # a duplicate row
    comments[10] = ("5010", "999", "orphan", "2025-04-11 11:00:00")
    return {"tickets": tickets, "comments": comments}


def cleaned_rows() -> dict[str, list[tuple[Any, ...]]]:
    """What a correct cleaner makes of them: canonical values, NULL for '', duplicate removed."""
    tickets = []
    for i, parent, title, created, modified, closure, sla, _achievement in raw_rows()["tickets"]:
        if "/" in closure:
            day, month_year = closure.split("/", 1)
            closure = f"2025-05-{day} 08:42:00"
        tickets.append((i, int(parent) if parent else None, title.replace("\x00", ""), created, modified,
                        closure or None, 1 if sla == "Yes" else 0, 87.5))  # fmt: skip
    comments = [(int(a), int(b), c, d) for a, b, c, d in raw_rows()["comments"][:-1]]
    return {"tickets": tickets, "comments": comments}


def write_sqlite(path: Path, rows: dict[str, list[tuple[Any, ...]]], *, cleaned: bool) -> Path:
    conn = sqlite3.connect(path)
    for table, columns in SCHEMA.items():
        declared = [SQLITE_DECLARED_TYPE[target] if cleaned else decl for _, decl, target, _ in columns]
        body = ", ".join(f'"{name}" {kind}' for (name, *_), kind in zip(columns, declared, strict=True))
        conn.execute(f'CREATE TABLE "{table}" ({body})')
        if rows[table]:
            conn.executemany(f'INSERT INTO "{table}" VALUES ({", ".join("?" for _ in columns)})', rows[table])
    conn.commit()
    conn.close()
    return path


def write_postgres(dsn: str, schema: str, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        for table, columns in SCHEMA.items():
            body = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(pg), sql.SQL(PG_TYPES[target])) for _, _, target, pg in columns
            )
            name = sql.Identifier(schema, table)
            conn.execute(sql.SQL("CREATE TABLE {} ({})").format(name, body))
            targets = [target for _, _, target, _ in columns]
            values = [tuple(_pg_value(v, t) for v, t in zip(row, targets, strict=True)) for row in rows[table]]
            with conn.cursor() as cursor:
                holes = sql.SQL(", ").join(sql.Placeholder() for _ in columns)
                cursor.executemany(sql.SQL("INSERT INTO {} VALUES ({})").format(name, holes), values)


def _pg_value(value: Any, target: str) -> Any:
    return bool(value) if target == "boolean" and value is not None else value


@pytest.fixture
def snapshots(tmp_path: Path) -> tuple[Path, Path]:
    raw = write_sqlite(tmp_path / "raw.db", raw_rows(), cleaned=False)
    cleaned = write_sqlite(tmp_path / "cleaned.db", cleaned_rows(), cleaned=True)
    return raw, cleaned


@pytest.mark.parametrize(
    ("score", "grade"),
    [(100.0, "excellent"), (90.0, "excellent"), (89.99, "good"), (80.0, "good"), (79.99, "acceptable"),
     (70.0, "acceptable"), (69.99, "poor"), (60.0, "poor"), (59.99, "failed"), (0.0, "failed")],
)  # fmt: skip
def test_grades_at_the_boundaries(score: float, grade: str) -> None:
    assert grade_for(score) == grade


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (dict(DEFAULT_WEIGHTS, completeness=54.0), "sum to 114, not 100"),
        ({"completeness": 50.0, "validity": 50.0}, "must name exactly"),
        (dict(DEFAULT_WEIGHTS, completeness=-40.0, validity=110.0), "numbers >= 0"),
    ],
)
def test_weights_that_do_not_make_100_are_rejected(snapshots: tuple[Path, Path], weights: dict, message: str) -> None:
    with pytest.raises(RulePackError, match=message):
        score_quality(sqlite_source(snapshots[0]), make_plan(), weights)


def test_score_rises_from_raw_snapshot_to_cleaned_file(snapshots: tuple[Path, Path]) -> None:
    raw, cleaned = snapshots
    before = score_quality(sqlite_source(raw), make_plan())
    after = score_quality(sqlite_source(cleaned), make_plan())
    assert before.score < after.score
    assert before.dimensions["validity"] < after.dimensions["validity"] == 100.0
    assert before.dimensions["uniqueness"] < after.dimensions["uniqueness"] == 100.0
    assert before.dimensions["integrity"] < after.dimensions["integrity"]
    assert before.dimensions["completeness"] == pytest.approx(after.dimensions["completeness"], abs=0.5)
    failing = {entry["target"] for entry in before.evidence["validity"].failing}
    assert {"tickets.TKT-Closure Date", "tickets.TKT-SLA Met", "comments.comment_id"} <= failing
    assert "tickets.TKT-Created Time" not in failing  # already canonical in the snapshot


def test_raw_day_first_dates_are_present_but_not_valid(snapshots: tuple[Path, Path]) -> None:
    plan = make_plan({"tickets": [("TKT-Closure Date", "TEXT", "timestamp", "TKT-Closure Date")]})
    score = score_quality(sqlite_source(snapshots[0]), plan)
    # 15 closed tickets: 9 ISO, 6 DD/MM/YYYY (day > 12); the 5 open ones hold ''
    assert score.dimensions["completeness"] == 75.0
    assert score.dimensions["validity"] == 60.0


def test_empty_strings_whitespace_and_markers_count_as_missing(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE "t" ("v" TEXT)')
    conn.executemany("INSERT INTO t VALUES (?)", [("",), ("  ",), ("N/A",), (None,), ("kept",)])
    conn.commit()
    conn.close()
    plan = make_plan({"t": [("v", "TEXT", "text", "v")]})
    assert score_quality(sqlite_source(path), plan).dimensions["completeness"] == 20.0


def test_empty_tables_score_without_dividing_by_zero(tmp_path: Path) -> None:
    path = write_sqlite(tmp_path / "empty.db", {"tickets": [], "comments": []}, cleaned=True)
    score = score_quality(sqlite_source(path), make_plan())
    assert score.score == 100.0 and score.grade == "excellent"
    assert set(score.dimensions) == set(DEFAULT_WEIGHTS)


def test_a_planned_table_missing_from_the_source_is_reported(snapshots: tuple[Path, Path]) -> None:
    schema = dict(SCHEMA, timesheets=[("TS-Hours", "REAL", "double precision", "TS-Hours")])
    score = score_quality(sqlite_source(snapshots[1]), make_plan(schema))
    assert score.evidence["completeness"].details["missing_tables"] == ["timesheets"]


def test_custom_weights_change_the_score(snapshots: tuple[Path, Path]) -> None:
    only_validity = {"completeness": 0, "validity": 100, "consistency": 0, "uniqueness": 0, "integrity": 0}
    score = score_quality(sqlite_source(snapshots[0]), make_plan(), only_validity)
    assert score.score == score.dimensions["validity"]


@pytest.mark.postgres
def test_postgres_score_is_at_least_the_cleaned_score(snapshots: tuple[Path, Path], fresh_database: str) -> None:
    write_postgres(fresh_database, "servicedesk_v1", cleaned_rows())
    cleaned = score_quality(sqlite_source(snapshots[1]), make_plan())
    loaded = score_quality(postgres_source(fresh_database, "servicedesk_v1"), make_plan())
    assert loaded.score >= cleaned.score
    assert loaded.dimensions["validity"] == 100.0
    assert loaded.dimensions["completeness"] == cleaned.dimensions["completeness"]
    assert loaded.evidence["integrity"].details["referential"] == cleaned.evidence["integrity"].details["referential"]
    assert "missing_tables" not in loaded.evidence["completeness"].details


@pytest.mark.postgres
def test_postgres_text_where_a_timestamp_was_planned_is_not_valid(fresh_database: str) -> None:
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA v1")
        conn.execute('CREATE TABLE v1.t ("when" text)')
        conn.execute("INSERT INTO v1.t VALUES ('2025-01-01 10:00:00'), ('')")
    plan = make_plan({"t": [("when", "TEXT", "timestamp", "when")]})
    score = score_quality(postgres_source(fresh_database, "v1"), plan)
    assert score.dimensions["validity"] == 0.0
    assert score.dimensions["completeness"] == 50.0


def test_score_of_the_demo_snapshot_is_evidence_backed(tmp_path: Path) -> None:
    demo = pytest.importorskip("servicedesk_etl.demo_data")
    summary = demo.generate_demo_snapshot(tmp_path / "demo.db", scale=0.01, seed=42)
    truth = json.loads(Path(summary.truth_path).read_text(encoding="utf-8"))
    schema = {table: [(c, "", t, c) for c, t in columns.items()] for table, columns in truth["column_types"].items()}
    score = score_quality(sqlite_source(summary.path), make_plan(schema))
    assert 60 <= score.score < 100
    assert score.dimensions["validity"] < 100  # dates as DD/MM, ids as text, Yes/No booleans
    assert score.dimensions["uniqueness"] < 100  # planted duplicate rows
    failing = {entry["target"] for entry in score.evidence["validity"].failing}
    assert "comments.comment_id" in failing
    assert json.loads(json.dumps(score.to_dict()))["dimensions"] == score.dimensions


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_every_corpus_file_scores_and_runs_the_rules(corpus_copy, name: str) -> None:
    infer = pytest.importorskip("servicedesk_etl.profiling.infer")
    path = corpus_copy(name)
    plan = infer.profile_database(path)
    score = score_quality(sqlite_source(path), plan)
    assert 0 <= score.score <= 100 and score.grade == grade_for(score.score)
    assert all(0 <= value <= 100 for value in score.dimensions.values())
    report = evaluate_rules(sqlite_source(path), plan)
    assert report.with_status(NOT_EVALUATED) == ()
    assert 0 <= report.score <= 100
