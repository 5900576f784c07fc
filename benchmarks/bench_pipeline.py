"""Time each gate and the whole pipeline as ratios to SPEC.md's floor.

The floor: the same rows streamed from SQLite into PostgreSQL with plain COPY into all-TEXT tables
(`sqlite3 -csv` piped into COPY when the sqlite3 program exists, else a Python stream). Ratios,
not seconds, are comparable across machines.

    python benchmarks/bench_pipeline.py [--scale 1.0] [--dsn DSN] [--runs 2]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

from servicedesk_etl.demo_data import generate_demo_snapshot
from servicedesk_etl.sqlite_source import list_tables, open_readonly, quote_ident, table_columns

TARGETS = {"profile": 2.0, "clean": 3.0, "production load": 2.5, "whole pipeline": 10.0}


def floor_seconds(snapshot: Path, dsn: str) -> float:
    conn = open_readonly(snapshot)
    tables = {name: [c.name for c in table_columns(conn, name)] for name in list_tables(conn)}
    with psycopg.connect(dsn, autocommit=True) as pg:
        pg.execute("DROP SCHEMA IF EXISTS bench_floor CASCADE")
        pg.execute("CREATE SCHEMA bench_floor")
        for name, columns in tables.items():
            pg.execute(sql.SQL("CREATE TABLE bench_floor.{} ({})").format(
                sql.Identifier(name), sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in columns)))
        start = time.perf_counter()
        for name in tables:
            copy_sql = sql.SQL("COPY bench_floor.{} FROM STDIN (FORMAT csv, ENCODING 'LATIN1')").format(sql.Identifier(name))
            with pg.cursor().copy(copy_sql) as copy:
                if shutil.which("sqlite3"):
                    process = subprocess.Popen(["sqlite3", "-csv", str(snapshot), f"SELECT * FROM {quote_ident(name)}"],
                                               stdout=subprocess.PIPE)
                    assert process.stdout is not None
                    while chunk := process.stdout.read(1 << 20):
                        copy.write(chunk)
                    process.wait()
                else:
                    for row in conn.execute(f"SELECT * FROM {quote_ident(name)}"):
                        copy.write_row([None if v is None else str(v) for v in row])
        elapsed = time.perf_counter() - start
        pg.execute("DROP SCHEMA bench_floor CASCADE")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--runs", type=int, default=2, help="runs of each step; the best is judged")
    args = parser.parse_args()

    import os

    from servicedesk_etl.embedded_pg import embedded_dsn
    from servicedesk_etl.loading import load_schema
    from servicedesk_etl.pg import drop_schema
    from servicedesk_etl.pipeline import PipelineSettings, clean_step, profile_step
    from servicedesk_etl.profiling.plan import Plan

    with tempfile.TemporaryDirectory(prefix="servicedesk-bench-") as scratch:
        work = Path(scratch)
        os.environ["SERVICEDESK_ETL_HOME"] = str(work / "home")
        dsn = args.dsn or embedded_dsn(work / "pg")
        snapshot = work / "servicedesk_tickets.db"
        demo = generate_demo_snapshot(snapshot, scale=args.scale)
        rows = sum(demo.row_counts.values())
        print(f"snapshot: {rows:,} rows, {snapshot.stat().st_size / 2**20:.1f} MiB; demo generated in {demo.seconds:.2f}s")

        floor = min(floor_seconds(snapshot, dsn) for _ in range(2))

        settings = PipelineSettings(run_dry_run=False)
        runs: dict[str, list[float]] = {"profile": [], "clean": [], "production load": []}
        for round_ in range(args.runs):
            start = time.perf_counter()
            profiled = profile_step(snapshot, work / f"profile{round_}", dsn=None, settings=settings)
            runs["profile"].append(time.perf_counter() - start)

            start = time.perf_counter()
            cleaned = clean_step(snapshot, profiled.artifact.plan_path, work / f"cleaned{round_}.db",
                                 score_before=profiled.artifact.quality_score, settings=settings)
            runs["clean"].append(time.perf_counter() - start)

            plan = Plan.read(profiled.artifact.plan_path)
            start = time.perf_counter()
            load_schema(cleaned.artifact.path, plan, dsn, "bench_load")
            runs["production load"].append(time.perf_counter() - start)
            drop_schema(dsn, "bench_load")

        from servicedesk_etl.runner import run_migration

        os.environ["SERVICEDESK_PG_DSN"] = dsn
        start = time.perf_counter()
        summary = run_migration(snapshot)
        runs["whole pipeline"] = [time.perf_counter() - start]
        if not summary.success:
            print(f"the pipeline stopped: {summary.stopped_by}: {summary.reason}")

    print(f"\nfloor (plain COPY into all-TEXT tables, best of two runs): {floor:.2f}s")
    print("each step: its first run in this process (it pays for importing and compiling its modules and")
    print(f"for polars' first use) and the best of {args.runs}; the verdict is on the best, as the floor is a best")
    print("of two. The whole pipeline runs once, cold: its figure includes importing Dagster.\n")
    print(f"{'step':<18}{'first':>8}{'best':>8}{'x floor':>9}{'(first)':>9}{'target':>9}")
    for step, seconds in runs.items():
        first, best = seconds[0], min(seconds)
        verdict = "ok" if best / floor <= TARGETS[step] else "over"
        print(f"{step:<18}{first:>8.2f}{best:>8.2f}{best / floor:>9.2f}{first / floor:>9.2f}{TARGETS[step]:>8.1f}x  {verdict}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak memory of this process: {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
