"""The code location loads, with the five assets in order and every gate wired as a blocking check."""

import subprocess
import sys

import dagster as dg

from servicedesk_etl.checks import GATES, NON_BLOCKING
from servicedesk_etl.definitions import defs
from servicedesk_etl.jobs import MIGRATION_JOB

from .conftest import REPO_ROOT

PIPELINE = ["sqlite_backup", "profile_report", "cleaned_db", "canary_schema", "production_schema"]


def test_definitions_hold_the_five_assets_in_pipeline_order():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == set(PIPELINE)
    for upstream, downstream in zip(PIPELINE, PIPELINE[1:]):
        parents = {key.to_user_string() for key in graph.get(dg.AssetKey(downstream)).parent_keys}
        assert upstream in parents, f"{downstream} does not depend on {upstream}"


def test_every_gate_is_a_check_and_all_but_the_score_warning_block():
    graph = defs.resolve_asset_graph()
    checks = {(key.asset_key.to_user_string(), key.name) for key in graph.asset_check_keys}
    expected = {(asset, gate) for asset, gates in GATES.items() for gate in gates}
    assert checks == expected
    for key in graph.asset_check_keys:
        spec = graph.get_check_spec(key)
        assert spec.blocking is (key.name not in NON_BLOCKING), key


def test_the_migration_job_covers_the_whole_graph():
    job = defs.resolve_job_def(MIGRATION_JOB)
    assert {node.name for node in job.graph.node_defs} >= set(PIPELINE)


def test_workspace_yaml_loads_in_dagster():
    completed = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", str(REPO_ROOT / "workspace.yaml")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
