"""Rule packs are data: validated at load, mapped by configuration, never silently skipped."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from servicedesk_etl.profiling.plan import ColumnPlan, Conversion, Plan, TablePlan
from servicedesk_etl.profiling.rules import (
    NOT_EVALUATED,
    PASS,
    RulePackError,
    evaluate_rules,
    load_pack,
    shipped_pack_paths,
)
from servicedesk_etl.profiling.sources import postgres_source, sqlite_source
from servicedesk_etl.sqlite_source import open_readonly

NOW = datetime(2025, 12, 1)
CATEGORIES = {"schema": 15, "completeness": 30, "data_types": 25, "business_rules": 20,
              "referential_integrity": 5, "text_integrity": 5}  # fmt: skip
SERVICEDESK_PACK = next(p for p in shipped_pack_paths() if p.stem == "servicedesk")
GENERIC_PACK = next(p for p in shipped_pack_paths() if p.stem == "generic")

COMMENT_STYLES = {
    "renamed": ("comment_id", "ticket_id", "user_id", "comment_text", "created_time"),
    "CT": ("CT-COMMENT-ID", "CT-TICKET-ID", "CT-USER-ID", "CT-COMMENT", "CT-CREATED-TIME"),
    "TKTCT": ("TKTCT-CommentID", "TKTCT-TicketID", "TKTCT-UserID", "TKTCT-Comment", "TKTCT-CreatedTime"),
}
TICKET_COLUMNS = {"TKT-Ticket ID": "INTEGER", "TKT-Title": "TEXT", "TKT-Status": "TEXT",
                  "TKT-Created Time": "TIMESTAMP", "TKT-Modified Time": "TIMESTAMP", "TKT-Closure Date": "TEXT",
                  "TKT-Actual Response Date": "TEXT", "TKT-Actual Resolution Date": "TEXT",
                  "TKT-SLA Closure Date": "TIMESTAMP"}  # fmt: skip
TIMESHEET_COLUMNS = {"TS-User Username": "TEXT", "TS-Date": "TIMESTAMP", "TS-Hours": "REAL", "TS-Crm ID": "INTEGER"}
TICKET_TARGETS = {"TKT-Closure Date": "timestamp", "TKT-Actual Response Date": "timestamp",
                  "TKT-Actual Resolution Date": "timestamp"}  # fmt: skip
COMMENT_TARGETS = ("bigint", "bigint", "bigint", "text", "timestamp")


def plan_for(path: Path, targets: dict[str, dict[str, str]] | None = None) -> Plan:
    """A plan for a real file: each column's target from `targets`, else from its declared type."""
    targets = targets or {}
    tables = []
    with open_readonly(path) as conn:
        names = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        for name in names:
            info = conn.execute("SELECT name, type FROM pragma_table_info(?)", (name,)).fetchall()
            rows = conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
            columns = tuple(
                ColumnPlan(column, column, declared, targets.get(name, {}).get(column) or _target(declared),
                           Conversion(), 1.0)
                for column, declared in info
            )  # fmt: skip
            tables.append(TablePlan(name, name, rows, columns))
    return Plan(str(path), "", "", tuple(tables))


def _target(declared: str) -> str:
    upper = declared.upper()
    if "INT" in upper:
        return "bigint"
    if any(word in upper for word in ("REAL", "NUMERIC", "DECIMAL", "FLOAT", "DOUBLE")):
        return "double precision"
    if "TIME" in upper or "DATE" in upper:
        return "timestamp"
    return "text"


def _create(conn: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    body = ", ".join(f'"{name}" {declared}' for name, declared in columns.items())
    conn.execute(f'CREATE TABLE "{table}" ({body})')


def _insert(conn: sqlite3.Connection, table: str, rows: list[tuple]) -> None:
    conn.executemany(f'INSERT INTO "{table}" VALUES ({", ".join("?" for _ in rows[0])})', rows)


def build_servicedesk(
    path: Path,
    *,
    comment_style: str = "renamed",
    comment_table: str = "comments",
    orphans: int = 3,
    admin_rows: int = 10,
    drop_ticket_columns: tuple[str, ...] = (),
) -> tuple[Path, Plan]:
    """40 tickets, 100 comments (`orphans` of them pointing nowhere), 50 timesheet rows."""
    conn = sqlite3.connect(path)
    tickets = {k: v for k, v in TICKET_COLUMNS.items() if k not in drop_ticket_columns}
    _create(conn, "tickets", tickets)
    ticket_rows = []
    for i in range(1, 41):
        full = {"TKT-Ticket ID": i, "TKT-Title": f"Printer {i}", "TKT-Status": "Closed" if i % 4 else "Open",
                "TKT-Created Time": f"2025-03-{i % 28 + 1:02d} 09:00:00",
                "TKT-Modified Time": f"2025-03-{i % 28 + 1:02d} 10:00:00",
                "TKT-Closure Date": f"2025-04-{i % 28 + 1:02d} 10:00:00" if i % 4 else "",
                "TKT-Actual Response Date": f"2025-03-{i % 28 + 1:02d} 09:30:00",
                "TKT-Actual Resolution Date": f"2025-04-{i % 28 + 1:02d} 09:00:00" if i % 4 else None,
                "TKT-SLA Closure Date": f"2025-04-{i % 28 + 1:02d} 12:00:00"}  # fmt: skip
        ticket_rows.append(tuple(full[k] for k in tickets))
    _insert(conn, "tickets", ticket_rows)
    names = COMMENT_STYLES[comment_style]
    _create(conn, comment_table, dict(zip(names, ("TEXT", "TEXT", "TEXT", "TEXT", "TIMESTAMP"), strict=True)))
    _insert(
        conn,
        comment_table,
        [(str(5000 + i), str(900 + i if i < orphans else i % 40 + 1), str(7), f"note {i}", "2025-03-05 11:00:00")
         for i in range(100)],
    )  # fmt: skip
    _create(conn, "timesheets", TIMESHEET_COLUMNS)
    crm_ids = [0 if i < admin_rows else i % 40 + 1 for i in range(50)]
    _insert(conn, "timesheets", [("agent", "2025-03-05 00:00:00", 1.5, crm_id) for crm_id in crm_ids])
    conn.commit()
    conn.close()
    targets = {"tickets": TICKET_TARGETS, comment_table: dict(zip(names, COMMENT_TARGETS, strict=True))}
    return path, plan_for(path, targets)


def write_pack(path: Path, weights: dict[str, float], rules: str = "") -> Path:
    lines = ["[pack]", 'name = "custom"', "", "[categories]"]
    lines += [f"{name} = {weight}" for name, weight in weights.items()]
    path.write_text("\n".join(lines) + "\n" + rules, encoding="utf-8")
    return path


# --- loading -------------------------------------------------------------------------------------


def test_pack_whose_weights_sum_to_114_is_rejected(tmp_path: Path) -> None:
    weights = dict(CATEGORIES, schema=29)
    with pytest.raises(RulePackError, match=r"weights sum to 114, not 100"):
        load_pack(write_pack(tmp_path / "bad.toml", weights))


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ('id = "X"\ncategory = "nope"\ncheck = "completeness"\nselect = "all_columns"\nmin = 1', "category 'nope'"),
        ('id = "X"\ncategory = "schema"\ncheck = "magic"\nselect = "all_columns"\nmin = 1', "unknown check 'magic'"),
        ('id = "X"\ncategory = "schema"\ncheck = "completeness"\nselect = "everything"\nmin = 1', "unknown selector"),
        ('id = "X"\ncategory = "schema"\ncheck = "completeness"\nselect = "all_columns"', "threshold"),
        ('id = "X"\ncategory = "schema"\ncheck = "completeness"\nmin = 1', "what it applies to"),
    ],
)
def test_pack_with_an_unusable_rule_is_rejected(tmp_path: Path, rule: str, message: str) -> None:
    with pytest.raises(RulePackError, match=message):
        load_pack(write_pack(tmp_path / "bad.toml", CATEGORIES, "[[rules]]\n" + rule + "\n"))


def test_servicedesk_pack_has_the_40_rules_in_six_weighted_categories() -> None:
    pack = load_pack(SERVICEDESK_PACK)
    counted = Counter(rule.category for rule in pack.rules if not rule.summary)
    assert counted == {"schema": 10, "completeness": 8, "data_types": 8, "business_rules": 8,
                       "referential_integrity": 4, "text_integrity": 2}  # fmt: skip
    assert pack.categories == {name: float(weight) for name, weight in CATEGORIES.items()}
    assert any(rule.summary for rule in pack.rules)


def test_generic_pack_loads_with_weights_summing_to_100() -> None:
    assert sum(load_pack(GENERIC_PACK).categories.values()) == 100


# --- evaluation ----------------------------------------------------------------------------------


def test_rule_on_a_missing_column_is_not_evaluated_and_names_it(tmp_path: Path) -> None:
    path, plan = build_servicedesk(tmp_path / "sd.db", drop_ticket_columns=("TKT-Modified Time",))
    report = evaluate_rules(sqlite_source(path), plan, [SERVICEDESK_PACK], now=NOW)
    completeness = report.by_id("SD-CMP-02")
    assert completeness.status == NOT_EVALUATED
    assert completeness.missing == ("ticket.modified",)
    assert "ticket.modified" in completeness.message
    presence = report.by_id("SD-SCH-04")
    assert presence.status == "fail" and presence.evidence["failing"] == ["ticket.modified"]
    assert len(report.results) == len(load_pack(SERVICEDESK_PACK).rules)
    assert report.categories["completeness"].not_evaluated >= 1


@pytest.mark.parametrize("style", sorted(COMMENT_STYLES))
def test_both_comment_export_naming_styles_map_to_the_same_rules(tmp_path: Path, style: str) -> None:
    path, plan = build_servicedesk(tmp_path / "sd.db", comment_style=style)
    report = evaluate_rules(sqlite_source(path), plan, [SERVICEDESK_PACK], now=NOW)
    assert report.with_status(NOT_EVALUATED) == ()
    orphans = report.by_id("SD-REF-01")
    assert orphans.status == PASS
    assert orphans.observed == pytest.approx(0.03)
    assert report.by_id("SD-REF-04").status == PASS
    assert list(report.by_id("SD-TYP-02").evidence["targets"]) == [f"comments.{COMMENT_STYLES[style][0]}"]


def test_user_mapping_file_names_columns_the_packs_do_not_know(tmp_path: Path) -> None:
    path, plan = build_servicedesk(tmp_path / "sd.db", comment_style="CT", comment_table="ticket_notes")
    without = evaluate_rules(sqlite_source(path), plan, [SERVICEDESK_PACK], now=NOW)
    assert without.by_id("SD-REF-01").status == NOT_EVALUATED
    assert "comment.ticket_id" in without.by_id("SD-REF-01").missing
    mapping = tmp_path / "mapping.toml"
    mapping.write_text('[tables]\ncomment = ["ticket_notes"]\n', encoding="utf-8")
    with_mapping = evaluate_rules(sqlite_source(path), plan, [SERVICEDESK_PACK], mapping=mapping, now=NOW)
    assert with_mapping.by_id("SD-REF-01").status == PASS
    assert with_mapping.with_status(NOT_EVALUATED) == ()


def test_summary_rules_are_reported_but_not_counted_in_their_category(tmp_path: Path) -> None:
    path, plan = build_servicedesk(tmp_path / "sd.db")
    report = evaluate_rules(sqlite_source(path), plan, [SERVICEDESK_PACK], now=NOW)
    summary = report.by_id("SD-CMP-SUM")
    assert summary.summary and summary.status == PASS
    completeness = report.categories["completeness"]
    counted = completeness.passed + completeness.failed + completeness.not_evaluated + completeness.not_applicable
    assert counted == 8


@pytest.mark.parametrize(
    ("orphans", "admin_rows", "failing"),
    [(3, 10, set()), (10, 10, {"SD-REF-01"}), (3, 2, {"SD-BUS-06"}), (3, 20, {"SD-BUS-06"})],
)
def test_orphan_rate_and_admin_share_thresholds(
    tmp_path: Path, orphans: int, admin_rows: int, failing: set[str]
) -> None:
    path, plan = build_servicedesk(tmp_path / "sd.db", orphans=orphans, admin_rows=admin_rows)
    report = evaluate_rules(sqlite_source(path), plan, [SERVICEDESK_PACK], now=NOW)
    assert {r.rule_id for r in report.with_status("fail")} == failing
    assert (report.score < 100.0) == bool(failing)


def test_rule_score_weights_categories_and_drops_nothing(tmp_path: Path) -> None:
    path, plan = build_servicedesk(tmp_path / "sd.db", orphans=10)
    report = evaluate_rules(sqlite_source(path), plan, now=NOW)
    assert [p.name for p in report.packs if p.applied] == ["generic", "servicedesk"]
    assert sum(c.weight for c in report.categories.values()) == pytest.approx(100)
    referential = report.categories["referential_integrity"]
    assert referential.failed >= 1 and referential.score is not None and referential.score < 100
    expected = sum(
        w * (c.score if c.score is not None else 0) for w, c in ((c.weight, c) for c in report.categories.values())
    ) / sum(c.weight for c in report.categories.values() if c.score is not None)
    assert report.score == pytest.approx(expected, abs=0.01)


def test_generic_pack_finds_references_between_key_columns_on_chinook(corpus_copy) -> None:
    path = corpus_copy("chinook.sqlite")
    report = evaluate_rules(sqlite_source(path), plan_for(path), now=NOW)
    servicedesk = next(p for p in report.packs if p.name == "servicedesk")
    assert not servicedesk.applied and "found 0" in servicedesk.reason
    links = report.by_id("GEN-REF-02")
    assert links.status == PASS
    assert "Invoice.CustomerId -> Customer.CustomerId" in links.evidence["targets"]
    assert "InvoiceLine.TrackId -> Track.TrackId" in links.evidence["targets"]
    assert report.with_status(NOT_EVALUATED) == ()


def test_generic_pack_flags_defects_a_snapshot_carries(tmp_path: Path) -> None:
    path, plan = build_servicedesk(tmp_path / "sd.db")
    report = evaluate_rules(sqlite_source(path), plan, [GENERIC_PACK], now=NOW)
    blanks = report.by_id("GEN-CMP-03")  # '' in the TEXT-stored closure dates of open tickets
    assert blanks.status == "fail" and "tickets.TKT-Closure Date" in blanks.evidence["failing"]
    conformity = report.by_id("GEN-TYP-01")  # comment ids stored as text are not bigint yet
    assert "comments.comment_id" in conformity.evidence["failing"]


def test_servicedesk_pack_on_the_demo_snapshot(tmp_path: Path) -> None:
    demo = pytest.importorskip("servicedesk_etl.demo_data")
    summary = demo.generate_demo_snapshot(tmp_path / "demo.db", scale=0.01, seed=42)
    truth = json.loads(Path(summary.truth_path).read_text(encoding="utf-8"))
    plan = plan_for(summary.path, truth["column_types"])
    report = evaluate_rules(sqlite_source(summary.path), plan, [SERVICEDESK_PACK])
    orphans = report.by_id("SD-REF-01")
    assert orphans.status == PASS and 0.005 < orphans.observed <= 0.05
    admin = report.by_id("SD-BUS-06")
    assert admin.status == PASS and 0.15 < admin.observed < 0.25
    assert report.with_status(NOT_EVALUATED) == ()
    assert report.by_id("SD-TYP-05").status == "fail"  # the nine DD/MM/YYYY response dates
    assert json.loads(json.dumps(report.to_dict()))["score"] == report.score


PG_TYPES = {"bigint": "bigint", "timestamp": "timestamp", "text": "text", "double precision": "double precision"}


def load_into_postgres(dsn: str, schema: str, path: Path, plan: Plan) -> None:
    """The cleaned equivalent of a built snapshot in typed PostgreSQL tables ('' becomes NULL)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as pg, open_readonly(path) as lite:
        pg.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        for table in plan.tables:
            columns = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c.pg_name), sql.SQL(PG_TYPES[c.target_type]))
                for c in table.columns
            )
            name = sql.Identifier(schema, table.pg_name)
            pg.execute(sql.SQL("CREATE TABLE {} ({})").format(name, columns))
            rows = [
                tuple(None if v in ("", None) else int(v) if c.target_type == "bigint" else v
                      for v, c in zip(row, table.columns, strict=True))
                for row in lite.execute(f'SELECT * FROM "{table.name}"')
            ]  # fmt: skip
            holes = sql.SQL(", ").join(sql.Placeholder() for _ in table.columns)
            with pg.cursor() as cursor:
                cursor.executemany(sql.SQL("INSERT INTO {} VALUES ({})").format(name, holes), rows)


@pytest.mark.postgres
def test_rules_run_the_same_on_a_postgres_schema(tmp_path: Path, fresh_database: str) -> None:
    path, plan = build_servicedesk(tmp_path / "sd.db", comment_style="TKTCT")
    load_into_postgres(fresh_database, "servicedesk_v1", path, plan)
    snapshot = evaluate_rules(sqlite_source(path), plan, now=NOW)
    loaded = evaluate_rules(postgres_source(fresh_database, "servicedesk_v1"), plan, now=NOW)
    assert loaded.with_status(NOT_EVALUATED) == ()
    assert loaded.by_id("SD-REF-01").observed == snapshot.by_id("SD-REF-01").observed == pytest.approx(0.03)
    assert snapshot.by_id("GEN-TYP-01").status == "fail" and loaded.by_id("GEN-TYP-01").status == PASS
    assert snapshot.by_id("GEN-CMP-03").status == "fail" and loaded.by_id("GEN-CMP-03").status == PASS
    assert loaded.score > snapshot.score
