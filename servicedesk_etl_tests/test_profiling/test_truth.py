"""The profile finds exactly what the demo generator planted, column by column."""

import json
from collections import Counter

import pytest

from servicedesk_etl.demo_data import generate_demo_snapshot
from servicedesk_etl.profiling.infer import profile_database

FULLY_LISTED = {
    "empty_string": lambda p: p.empty_strings,
    "whitespace": lambda p: p.whitespace_only,
    "null_marker": lambda p: sum(p.null_markers.values()),
    "nul_byte": lambda p: p.nul_bytes,
    "crlf": lambda p: p.crlf,
    "invalid_utf8": lambda p: p.invalid_utf8,
}


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    path = tmp_path_factory.mktemp("truth") / "servicedesk_tickets.db"
    generate_demo_snapshot(path, scale=0.02, seed=5)
    truth = json.loads(path.with_name(path.name + ".truth.json").read_text())
    return profile_database(path), truth


def test_every_planted_null_like_and_text_defect_is_counted_in_its_column(profiled):
    plan, truth = profiled
    planted = Counter((c["table"], c["column"], c["defect"]) for c in truth["cells"] if c["defect"] in FULLY_LISTED)
    assert planted, "the demo planted nothing to find"
    found = {}
    for table in plan.tables:
        for column in table.columns:
            for defect, measure in FULLY_LISTED.items():
                if measure(column.profile):
                    found[(table.name, column.name, defect)] = measure(column.profile)
    assert found == dict(planted)


@pytest.mark.parametrize("column, defect, day_first", [
    ("TKT-Actual Response Date", "dmy_datetime", True),
    ("Chg-Planned Start Date", "mdy_datetime", False),
])
def test_slash_dates_are_counted_and_their_order_is_proven_by_evidence(profiled, column, defect, day_first):
    plan, truth = profiled
    planned = plan.table("tickets").column(column)
    assert planned.target_type == "timestamp"
    assert planned.conversion.day_first is day_first
    assert planned.conversion.day_first_assumed is False
    slash_rows = sum(f.count for f in planned.profile.formats if "/" in f.example)
    assert slash_rows == truth["counts"][defect]


def test_profiling_the_same_snapshot_twice_gives_the_same_plan(profiled):
    plan, _ = profiled
    again = profile_database(plan.source_path)
    first, second = plan.to_dict(), again.to_dict()
    first.pop("created_at"), second.pop("created_at")
    assert first == second
