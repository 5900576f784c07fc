"""The dashboard query templates run on a correctly typed schema, fail on a mistyped one, and are
not applicable (not failed) on databases without the ServiceDesk tables."""

from __future__ import annotations

from decimal import Decimal

import psycopg
import pytest
from psycopg import sql

from servicedesk_etl.loading import load_schema
from servicedesk_etl.query_templates import (
    FAILED,
    NOT_APPLICABLE,
    OK,
    QueryTemplate,
    load_templates,
    parse_templates,
    run_query_templates,
)
from servicedesk_etl_tests.test_loading import (
    TICKET_COLUMNS,
    column,
    servicedesk_cleaned,
    table_plan,
    ticket_rows,
    timesheet_rows,
    write_cleaned,
)

pytestmark = pytest.mark.postgres

DASHBOARD_NEEDS = {
    "ticket_totals", "open_tickets", "average_resolution_time", "tickets_per_day", "status_breakdown",
    "severity_breakdown", "team_breakdown", "sla_compliance", "agent_workload", "resolution_time_percentiles",
    "timesheet_hours_by_account", "admin_time_share", "data_freshness", "ticket_null_rates",
}


def runs_by_name(runs) -> dict:
    return {run.name: run for run in runs}


def test_packaged_templates_parse_with_names_and_tables():
    templates = load_templates()
    names = {t.name for t in templates}
    assert DASHBOARD_NEEDS <= names
    for template in templates:
        assert template.tables, template.name
        assert set(template.tables) <= {"tickets", "comments", "timesheets"}
        assert not template.sql.rstrip().endswith(";")


def test_parse_rejects_two_statements_and_duplicate_names():
    with pytest.raises(ValueError, match="exactly one statement"):
        parse_templates("-- name: a\n-- tables: t\nSELECT 1; SELECT 2;\n")
    with pytest.raises(ValueError, match="more than once"):
        parse_templates("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")
    (only,) = parse_templates("-- name: a\n-- tables: t, u\n-- description: d\nSELECT 1\nFROM t;\n")
    assert only == QueryTemplate("a", ("t", "u"), "d", "SELECT 1\nFROM t")


def test_every_template_runs_on_a_correctly_typed_servicedesk_schema(tmp_path, fresh_database):
    cleaned, plan = servicedesk_cleaned(tmp_path / "clean.db")
    load_schema(cleaned, plan, fresh_database, "servicedesk")
    runs = run_query_templates(fresh_database)
    assert [(r.name, r.error) for r in runs if r.status != OK] == []
    by_name = runs_by_name(runs)
    assert by_name["tickets_per_day"].rows > 10
    assert by_name["status_breakdown"].rows == 5


def test_templates_compute_what_the_dashboards_show(tmp_path, fresh_database):
    cleaned, plan = servicedesk_cleaned(tmp_path / "clean.db", tickets=120, timesheets=1500)
    load_schema(cleaned, plan, fresh_database, "v1")
    templates = {t.name: t for t in load_templates()}
    tickets, hours = ticket_rows(120), timesheet_rows(1500, 120)
    met = sum(1 for row in tickets if row[10] is True)
    known = sum(1 for row in tickets if row[10] is not None)
    admin = sum(Decimal(str(h)) for _, _, h, crm, _ in hours if crm == 0)
    total = sum(Decimal(str(h)) for _, _, h, _, _ in hours)
    with psycopg.connect(fresh_database) as conn:
        conn.execute("SET search_path TO v1")
        sla = conn.execute(templates["sla_compliance"].sql).fetchone()
        share = conn.execute(templates["admin_time_share"].sql).fetchone()
        totals = conn.execute(templates["ticket_totals"].sql).fetchone()
    assert sla[0] == met and sla[0] + sla[1] == known
    assert sla[3] == round(Decimal(100 * met) / known, 2)
    assert share[0] == round(admin, 2) and share[1] == round(total, 2)
    assert share[2] == round(100 * admin / total, 2)
    assert totals[0] == 120 and totals[1] == sum(1 for row in tickets if row[2] not in ("Closed", "Resolved"))


def test_a_date_column_left_as_text_fails_the_templates_that_use_it(tmp_path, fresh_database):
    mistyped = [column(c.name, "text") if c.name == "TKT-Created Time" else c for c in TICKET_COLUMNS]
    cleaned, plan = write_cleaned(tmp_path / "c.db", [(table_plan("tickets", mistyped, 120), ticket_rows(120))])
    load_schema(cleaned, plan, fresh_database, "v1")
    by_name = runs_by_name(run_query_templates(fresh_database, "v1"))
    for name in ("tickets_per_day", "average_resolution_time", "open_tickets"):
        assert by_name[name].status == FAILED and not by_name[name].ok
        assert "text" in by_name[name].error
    assert by_name["status_breakdown"].status == OK
    assert by_name["admin_time_share"].status == NOT_APPLICABLE and by_name["admin_time_share"].ok


def test_a_non_servicedesk_database_has_nothing_applicable_and_nothing_failed(tmp_path, fresh_database):
    table = table_plan("Track", [column("TrackId", "bigint"), column("Name", "text")], 1)
    cleaned, plan = write_cleaned(tmp_path / "c.db", [(table, [(1, "For Those About To Rock")])])
    load_schema(cleaned, plan, fresh_database, "servicedesk")
    runs = run_query_templates(fresh_database)
    assert runs and all(r.ok and r.status == NOT_APPLICABLE for r in runs)
    assert "tickets" in runs_by_name(runs)["ticket_totals"].error


def test_schema_name_is_an_identifier_not_sql(tmp_path, fresh_database):
    cleaned, plan = servicedesk_cleaned(tmp_path / "clean.db", tickets=10, comments=10, timesheets=10)
    odd = 'v1"; DROP SCHEMA x; --'
    load_schema(cleaned, plan, fresh_database, odd)
    runs = run_query_templates(fresh_database, odd)
    assert all(r.status == OK for r in runs), [(r.name, r.error) for r in runs if r.status != OK]


def test_templates_cannot_write(fresh_database):
    with psycopg.connect(fresh_database) as conn:
        conn.execute("CREATE SCHEMA s; CREATE TABLE s.tickets (n int)")
    writer = QueryTemplate("writer", ("tickets",), "", "INSERT INTO tickets VALUES (1)")
    (run,) = run_query_templates(fresh_database, "s", templates=(writer,))
    assert run.status == FAILED and "read-only" in run.error
    with psycopg.connect(fresh_database) as conn:
        assert conn.execute(sql.SQL("SELECT count(*) FROM s.tickets")).fetchone() == (0,)
