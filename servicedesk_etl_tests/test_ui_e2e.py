"""The Dagster UI, for real: a `dagster-webserver` on this code location, driven through its GraphQL API.

One webserver serves the module. A run of the whole graph is launched the way the UI's
"Materialize all" button launches it, on a scale-0.01 demo snapshot and a new PostgreSQL database;
then what the asset graph, the asset-check dashboard and the run's event log show is read back.
A second run on a file that is not SQLite must stop at its first gate, visibly, and touch nothing live.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from servicedesk_etl.checks import GATES, NON_BLOCKING
from servicedesk_etl.jobs import MIGRATION_JOB
from servicedesk_etl.settings import LIVE_SCHEMA

from .conftest import REPO_ROOT, scratch_database

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

PIPELINE = ["sqlite_backup", "profile_report", "cleaned_db", "canary_schema", "production_schema"]
LOCATION = "servicedesk_etl"
REPOSITORY = "__repository__"
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}

# The webserver launches runs itself (DefaultRunCoordinator: a subprocess per run), so no daemon is needed.
INSTANCE_YAML = """\
telemetry:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
"""

METADATA_FIELDS = """
    label
    __typename
    ... on IntMetadataEntry { intValue }
    ... on FloatMetadataEntry { floatValue }
    ... on TextMetadataEntry { text }
    ... on BoolMetadataEntry { boolValue }
    ... on JsonMetadataEntry { jsonString }
    ... on PathMetadataEntry { path }
    ... on TableSchemaMetadataEntry { schema { columns { name type } } }
"""

ASSET_GRAPH_QUERY = """
query AssetGraph {
  assetNodes {
    assetKey { path }
    dependencyKeys { path }
    jobNames
    assetChecksOrError {
      __typename
      ... on AssetChecks { checks { name blocking description } }
    }
  }
}
"""

LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
    ... on PipelineNotFoundError { message }
  }
}
"""

RUN_STATUS = """
query RunStatus($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { status } ... on PythonError { message } }
}
"""

RUN_EVENTS = """
query RunEvents($runId: ID!, $cursor: String) {
  logsForRun(runId: $runId, afterCursor: $cursor) {
    __typename
    ... on EventConnection {
      cursor
      hasMore
      events {
        __typename
        ... on MaterializationEvent { assetKey { path } metadataEntries { METADATA_FIELDS } }
        ... on AssetCheckEvaluationEvent {
          evaluation { checkName assetKey { path } success severity description metadataEntries { METADATA_FIELDS } }
        }
        ... on ExecutionStepFailureEvent { stepKey error { message } }
      }
    }
  }
}
""".replace("METADATA_FIELDS", METADATA_FIELDS)

CHECK_DASHBOARD = """
query CheckDashboard {
  assetNodes {
    assetKey { path }
    assetChecksOrError {
      ... on AssetChecks {
        checks { name executionForLatestMaterialization { runId status evaluation { success } } }
      }
    }
  }
}
"""


class GraphQL:
    """The webserver's `/graphql` endpoint; any GraphQL error fails the test with the server's message."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def __call__(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.base_url}/graphql", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            document = json.load(response)
        assert not document.get("errors"), document["errors"]
        return document["data"]


@dataclass(frozen=True)
class Webserver:
    graphql: GraphQL
    dagster_home: Path
    state_home: Path
    target_dsn: str
    snapshot: Path
    log: Path


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    status: str
    materializations: dict[str, dict[str, Any]]
    checks: dict[tuple[str, str], dict[str, Any]]
    step_failures: dict[str, str]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def metadata_values(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """GraphQL metadata entries as {label: plain value}; JSON decoded, table schemas as {column: type}."""
    values: dict[str, Any] = {}
    for entry in entries:
        kind = entry["__typename"]
        if kind == "JsonMetadataEntry":
            values[entry["label"]] = json.loads(entry["jsonString"])
        elif kind == "TableSchemaMetadataEntry":
            values[entry["label"]] = {column["name"]: column["type"] for column in entry["schema"]["columns"]}
        else:
            fields = [value for key, value in entry.items() if key not in {"label", "__typename"}]
            values[entry["label"]] = fields[0] if fields else None
    return values


def wait_until_serving(graphql: GraphQL, process: subprocess.Popen[bytes], log: Path, timeout: float = 240) -> None:
    """Until `/server_info` answers and the code location has loaded (or the webserver died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"dagster-webserver exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{graphql.base_url}/server_info", timeout=5):
                pass
            data = graphql("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                           "locationOrLoadError { __typename ... on PythonError { message } } } } } }")
            entries = data["workspaceOrError"]["locationEntries"]
            if entries and all(entry["loadStatus"] == "LOADED" for entry in entries):
                errors = [e for e in entries if e["locationOrLoadError"]["__typename"] == "PythonError"]
                assert not errors, errors
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    pytest.fail(f"dagster-webserver did not serve within {timeout}s:\n{log.read_text()[-4000:]}")


def launch_migration(graphql: GraphQL, snapshot: Path) -> str:
    """What the UI's "Materialize all" does: launch the migration job with the snapshot in run config."""
    params = {
        "selector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "jobName": MIGRATION_JOB},
        "runConfigData": {"resources": {"snapshot": {"config": {"path": str(snapshot)}}}},
    }
    result = graphql(LAUNCH_RUN, {"params": params})["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def wait_for_run(graphql: GraphQL, run_id: str, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = graphql(RUN_STATUS, {"runId": run_id})["runOrError"]
        assert run["__typename"] == "Run", run
        if run["status"] in FINISHED:
            return run["status"]
        time.sleep(1)
    pytest.fail(f"run {run_id} did not finish within {timeout}s")


def read_run(graphql: GraphQL, run_id: str, status: str) -> RunRecord:
    materializations: dict[str, dict[str, Any]] = {}
    checks: dict[tuple[str, str], dict[str, Any]] = {}
    failures: dict[str, str] = {}
    cursor = None
    while True:
        connection = graphql(RUN_EVENTS, {"runId": run_id, "cursor": cursor})["logsForRun"]
        assert connection["__typename"] == "EventConnection", connection
        for event in connection["events"]:
            kind = event["__typename"]
            if kind == "MaterializationEvent":
                materializations["/".join(event["assetKey"]["path"])] = metadata_values(event["metadataEntries"])
            elif kind == "AssetCheckEvaluationEvent":
                evaluation = event["evaluation"]
                key = ("/".join(evaluation["assetKey"]["path"]), evaluation["checkName"])
                checks[key] = {**evaluation, "metadata": metadata_values(evaluation["metadataEntries"])}
            elif kind == "ExecutionStepFailureEvent":
                failures[event["stepKey"]] = event["error"]["message"]
        cursor = connection["cursor"]
        if not connection["hasMore"]:
            break
    return RunRecord(run_id, status, materializations, checks, failures)


def live_row_counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        tables = [row[0] for row in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (LIVE_SCHEMA,))]
        count = sql.SQL("SELECT count(*) FROM {}")
        return {table: conn.execute(count.format(sql.Identifier(LIVE_SCHEMA, table))).fetchone()[0] for table in tables}


@pytest.fixture(scope="module")
def target_dsn(pg_dsn: str) -> Iterator[str]:
    """A new, empty database for the module's webserver (the module-scoped twin of `fresh_database`)."""
    with scratch_database(pg_dsn, "test_ui") as dsn:
        yield dsn


@pytest.fixture(scope="module")
def webserver(tmp_path_factory: pytest.TempPathFactory, target_dsn: str) -> Iterator[Webserver]:
    from servicedesk_etl.demo_data import generate_demo_snapshot

    root = tmp_path_factory.mktemp("ui")
    dagster_home, state_home = root / "dagster", root / "state"
    dagster_home.mkdir()
    state_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(INSTANCE_YAML, encoding="utf-8")
    snapshot = root / "servicedesk_tickets.db"
    generate_demo_snapshot(snapshot, scale=0.01, seed=42)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "SERVICEDESK_ETL_HOME": str(state_home),
        "SERVICEDESK_PG_DSN": target_dsn,
        "SERVICEDESK_SNAPSHOT": str(snapshot),
    }
    port = free_port()
    log = root / "webserver.log"
    webserver_bin = Path(sys.executable).with_name("dagster-webserver")
    command = [str(webserver_bin), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        graphql = GraphQL(f"http://127.0.0.1:{port}")
        wait_until_serving(graphql, process, log)
        yield Webserver(graphql, dagster_home, state_home, target_dsn, snapshot, log)
    finally:
        stop_process_group(process)


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the webserver and the code server it spawned (its own session), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def good_run(webserver: Webserver) -> RunRecord:
    run_id = launch_migration(webserver.graphql, webserver.snapshot)
    status = wait_for_run(webserver.graphql, run_id)
    return read_run(webserver.graphql, run_id, status)


@pytest.fixture(scope="module")
def refused_run(webserver: Webserver, good_run: RunRecord) -> RunRecord:
    """After the good run: a run on a file that is not SQLite at all."""
    not_sqlite = webserver.snapshot.with_name("export.xlsx.db")
    not_sqlite.write_bytes(b"PK\x03\x04 this is a spreadsheet, not a SQLite database" * 64)
    run_id = launch_migration(webserver.graphql, not_sqlite)
    status = wait_for_run(webserver.graphql, run_id)
    return read_run(webserver.graphql, run_id, status)


def test_the_ui_shows_the_five_assets_in_pipeline_order_in_the_migration_job(webserver: Webserver):
    nodes = {"/".join(node["assetKey"]["path"]): node for node in webserver.graphql(ASSET_GRAPH_QUERY)["assetNodes"]}
    assert set(nodes) == set(PIPELINE)
    for upstream, downstream in itertools.pairwise(PIPELINE):
        parents = {"/".join(key["path"]) for key in nodes[downstream]["dependencyKeys"]}
        assert upstream in parents, f"the UI does not draw {upstream} -> {downstream}"
    assert all(MIGRATION_JOB in node["jobNames"] for node in nodes.values())


def test_the_ui_lists_every_gate_as_a_check_blocking_except_the_score_warning(webserver: Webserver):
    shown = {}
    for node in webserver.graphql(ASSET_GRAPH_QUERY)["assetNodes"]:
        checks = node["assetChecksOrError"]
        assert checks["__typename"] == "AssetChecks", checks
        for check in checks["checks"]:
            shown[("/".join(node["assetKey"]["path"]), check["name"])] = check
    expected = {(asset, gate): description for asset, gates in GATES.items() for gate, description in gates.items()}
    assert set(shown) == set(expected)
    for (asset, gate), check in shown.items():
        assert check["blocking"] is (gate not in NON_BLOCKING), (asset, gate)
        assert check["description"] == expected[(asset, gate)]


def test_a_run_launched_from_the_ui_materializes_the_whole_graph(good_run: RunRecord, webserver: Webserver):
    assert good_run.status == "SUCCESS", (good_run.step_failures, webserver.log.read_text()[-3000:])
    assert set(good_run.materializations) == set(PIPELINE)
    assert not good_run.step_failures


def test_every_gate_of_the_run_passed_and_says_why_in_its_summary(good_run: RunRecord):
    expected = {(asset, gate) for asset, gates in GATES.items() for gate in gates}
    assert set(good_run.checks) == expected
    for key, check in good_run.checks.items():
        assert check["success"], (key, check["description"])
        summary = check["metadata"]["summary"]
        assert summary and summary == check["description"], key
        expected_severity = "WARN" if key[1] in NON_BLOCKING else "ERROR"
        assert check["severity"] == expected_severity, key


def test_materializations_carry_row_counts_durations_and_the_column_schema(good_run: RunRecord):
    materialized = good_run.materializations
    for asset in PIPELINE:
        assert materialized[asset]["dagster/row_count"] > 0, asset
        assert materialized[asset]["seconds"] >= 0, asset
    backup_rows = materialized["sqlite_backup"]["dagster/row_count"]
    assert materialized["profile_report"]["dagster/row_count"] == backup_rows
    assert materialized["canary_schema"]["dagster/row_count"] < materialized["production_schema"]["dagster/row_count"]
    assert materialized["production_schema"]["dagster/row_count"] == materialized["cleaned_db"]["dagster/row_count"]
    schema = materialized["production_schema"]["dagster/column_schema"]
    assert schema["tickets.TKT-Created Time"] == "timestamp"
    assert schema["tickets.TKT-Actual Response Date"] == "timestamp"
    assert 0 <= materialized["profile_report"]["quality_score"] <= 100


def test_gate_evidence_names_the_figures_behind_each_verdict(good_run: RunRecord):
    confidence = good_run.checks[("profile_report", "type_confidence")]["metadata"]
    assert confidence["columns"] == len(good_run.materializations["production_schema"]["dagster/column_schema"])
    assert confidence["lowest_confidence"] >= confidence["threshold"]
    score = good_run.checks[("profile_report", "quality_score")]["metadata"]
    assert set(score["dimensions"]) >= {"completeness", "validity", "consistency", "uniqueness", "integrity"}
    assert sum(score["rules"].values()) > 0 and 0 <= score["rule_score"] <= 100
    reconciled = good_run.checks[("production_schema", "production_reconciled")]["metadata"]
    assert reconciled, "the reconciliation check carries no figures"
    queries = good_run.checks[("production_schema", "production_queries")]["metadata"]["queries"]
    assert queries and all(query["ok"] is not False for query in queries)


def test_the_profile_report_named_in_the_ui_is_on_disk(good_run: RunRecord, webserver: Webserver):
    report = Path(good_run.materializations["profile_report"]["report"])
    assert report == webserver.state_home / "runs" / good_run.run_id / "profile_report.md"
    assert report.read_text(encoding="utf-8").startswith("# Profile report")


def test_the_run_from_the_ui_made_the_live_schema_serve_the_loaded_rows(good_run: RunRecord, webserver: Webserver):
    live = live_row_counts(webserver.target_dsn)
    assert live == good_run.materializations["production_schema"]["rows_per_table"]
    assert sum(live.values()) == good_run.materializations["production_schema"]["dagster/row_count"]


def test_the_check_dashboard_shows_the_latest_execution_of_every_gate(good_run: RunRecord, webserver: Webserver):
    for node in webserver.graphql(CHECK_DASHBOARD)["assetNodes"]:
        for check in node["assetChecksOrError"]["checks"]:
            latest = check["executionForLatestMaterialization"]
            assert latest is not None, check["name"]
            assert latest["runId"] == good_run.run_id
            assert latest["status"] == "SUCCEEDED" and latest["evaluation"]["success"], check["name"]


def test_a_file_that_is_not_sqlite_stops_the_run_at_preflight_and_nothing_downstream_runs(refused_run: RunRecord):
    assert refused_run.status == "FAILURE"
    assert refused_run.materializations == {}
    preflight = refused_run.checks[("sqlite_backup", "preflight")]
    assert preflight["success"] is False
    assert "snapshot_opens" in preflight["metadata"]["summary"]
    assert "sqlite_backup" in refused_run.step_failures
    assert not any(asset != "sqlite_backup" for asset, _ in refused_run.checks)


def test_a_refused_run_leaves_the_live_schema_as_the_good_run_left_it(refused_run: RunRecord, good_run: RunRecord,
                                                                      webserver: Webserver):
    assert live_row_counts(webserver.target_dsn) == good_run.materializations["production_schema"]["rows_per_table"]
