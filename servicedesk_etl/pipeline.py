"""The five steps of the migration as plain functions: each does its work and evaluates its gates.

The Dagster assets, the CLI sub-commands and the tests all call these; none of them decides
anything a step does not decide here.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from servicedesk_etl.gates import GateResult
from servicedesk_etl.jsonable import jsonable
from servicedesk_etl.pg import drop_schema, schema_exists
from servicedesk_etl.profiling.plan import Plan, TablePlan
from servicedesk_etl.raw_cache import FrameHandoff
from servicedesk_etl.settings import LIVE_SCHEMA

log = logging.getLogger(__name__)

T = TypeVar("T")
RAW_CACHE_DIR = "raw"  # beside plan.json: the profiled frames, so the cleaner does not read SQLite again
FRAMES_KEPT_IN_MEMORY = 256 * 2**20
Progress = Callable[[str, int, int], None]
HealthCheck = Callable[[], None]


@dataclass(frozen=True)
class PipelineSettings:
    """Every threshold a gate applies, in one place (the Dagster resource and the CLI fill it in)."""

    min_type_confidence: float = 0.95
    max_unconvertible_share: float = 0.20
    min_typed_confidence: float = 0.80
    min_declared_confidence: float = 0.50
    min_quality_score: float = 80.0
    canary_percent: float = 10.0
    keep_versions: int = 3
    keep_runs: int = 30
    load_workers: int = 2
    day_first_default: bool = True
    duplicate_policy: str = "keep_first"
    check_every_rows: int = 10_000
    min_free_disk_ratio: float = 2.0
    min_free_disk_bytes: int = 256 * 2**20
    min_available_memory_bytes: int = 256 * 2**20
    run_dry_run: bool = True
    rule_packs: tuple[str, ...] = ()
    rule_mapping: str | None = None


@dataclass(frozen=True)
class StepOutcome(Generic[T]):
    """What a step produced, the gates it evaluated, and figures worth showing beside it."""

    artifact: T
    gates: tuple[GateResult, ...]
    metadata: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class BackupArtifact:
    source: Path
    source_sha256: str
    path: Path
    sha256: str
    row_counts: dict[str, int]


@dataclass(frozen=True)
class ProfileArtifact:
    source: Path
    plan_path: Path
    report_path: Path
    quality_score: float
    dimensions: dict[str, float]


@dataclass(frozen=True)
class CleanedArtifact:
    path: Path
    plan_path: Path
    source_sha256: str
    rows: dict[str, int]
    quality_score: float


@dataclass(frozen=True)
class SchemaArtifact:
    schema: str
    rows: dict[str, int]
    live: bool
    previous_live: str | None = None


def elapsed_since(start: float) -> float:
    return round(time.perf_counter() - start, 3)


def concurrently(*calls: Callable[[], Any]) -> list[Any]:
    """Independent gate work run at once, results in call order; the first error is raised.

    Each call mostly waits on SQLite, polars or PostgreSQL (all release the GIL), so they overlap.
    """
    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="gate") as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.result() for future in futures]


def read_plan(path: Path) -> Plan:
    """A plan from `plan.json`, or from the `plan` of a profile report (`profile --json`)."""
    import json

    from servicedesk_etl.errors import InputError

    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        return Plan.from_dict(document["plan"] if "plan" in document else document)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path}: not a usable plan ({error})") from error


def write_profile_json(plan: Plan, gates: list[GateResult], score: Any, rules: Any, path: Path) -> Path:
    """The profile as one JSON document: the plan (with each column's evidence), the score and the gates."""
    import json

    document = {
        "plan": plan.to_dict(),
        "quality": {"score": score.score, "grade": score.grade, "dimensions": dict(score.dimensions)},
        "gates": [jsonable(gate) for gate in gates],
        "rules": jsonable(rules.to_dict()),
    }
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    return path


# --- step 1: sqlite_backup -------------------------------------------------------------------


def backup_step(source: Path, run_dir: Path, *, dsn: str | None, settings: PipelineSettings) -> StepOutcome[BackupArtifact | None]:
    """Preflight, then a verified online-API backup of the snapshot (the copy every later step reads).

    First the oldest run directories beside `run_dir` go, beyond `keep_runs`: each holds a copy of
    its snapshot and its cleaned file, and the disk check comes next."""
    from servicedesk_etl.backup import backup_sqlite, prune_runs, verify_backup
    from servicedesk_etl.preflight import run_preflight

    start = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    pruned = [str(path) for path in prune_runs(run_dir, settings.keep_runs)]
    report = run_preflight(source, dsn, work_dirs=[run_dir], min_free_ratio=settings.min_free_disk_ratio)
    preflight = GateResult(
        "preflight",
        passed=report.status != "fail",
        summary=_preflight_summary(report),
        metadata=jsonable(report.to_dict()),
    )
    if not preflight.passed:
        return StepOutcome(None, (preflight,), {"pruned_runs": pruned}, elapsed_since(start))
    backup = backup_sqlite(source, run_dir / "backup")
    verification = verify_backup(source, backup.path)
    verified = GateResult(
        "backup_verified",
        passed=verification.ok,
        summary="backup matches the snapshot" if verification.ok else _failed_checks(verification.checks),
        metadata={"backup": str(backup.path), "sha256": backup.sha256, "row_counts": dict(verification.row_counts),
                  "checks": [jsonable(check) for check in verification.checks]},
    )
    artifact = BackupArtifact(source, backup.source_sha256, backup.path, backup.sha256, dict(verification.row_counts))
    metadata = {"rows": sum(artifact.row_counts.values()), "rows_per_table": artifact.row_counts,
                "backup": str(backup.path), "sha256": backup.sha256, "source": str(source),
                "source_sha256": backup.source_sha256, "pruned_runs": pruned}
    return StepOutcome(artifact, (preflight, verified), metadata, elapsed_since(start))


def _preflight_summary(report: Any) -> str:
    failing = [check for check in report.checks if check.status != "pass"]
    if not failing:
        return f"all {len(report.checks)} preflight checks passed"
    return "; ".join(f"{check.name}: {check.status} ({check.advice or check.measured})" for check in failing)


def _failed_checks(checks: Any) -> str:
    return "; ".join(f"{check.name}: {getattr(check, 'detail', '')}" for check in checks if not check.ok)


# --- step 2: profile_report ------------------------------------------------------------------


def profile_step(
    source: Path, run_dir: Path, *, dsn: str | None, settings: PipelineSettings, progress: Progress | None = None
) -> StepOutcome[ProfileArtifact]:
    """Infer the plan from the values, score the snapshot, dry-run the plan, and gate on confidence."""
    from servicedesk_etl.dryrun import SampleChooser
    from servicedesk_etl.profiling.frame_source import frame_preparer
    from servicedesk_etl.profiling.infer import profile_database
    from servicedesk_etl.profiling.rules import evaluate_rules
    from servicedesk_etl.profiling.score import score_quality, sqlite_source
    from servicedesk_etl.reports import write_profile_report

    start = time.perf_counter()
    questions = GateQuestions(rule_packs(settings), rule_mapping(settings))  # an unusable pack stops us here
    run_dir.mkdir(parents=True, exist_ok=True)
    handoff = FrameHandoff(run_dir / RAW_CACHE_DIR, keep_bytes=frames_memory_budget())
    preparer = frame_preparer(source)
    chooser = SampleChooser(source) if settings.run_dry_run and dsn is not None else None
    chosen = profile_settings(settings)

    def on_table(table: str, frame: Any) -> None:
        handoff.add(table, frame)
        if preparer is not None:
            preparer.add(table, frame)

    counted_ahead = questions.asked_ahead(preparer, chosen) if preparer is not None else None

    def on_plan(table: TablePlan) -> None:
        """As each table is decided: its gate questions counted, its dry-run sample chosen."""
        if counted_ahead is not None:
            counted_ahead(table)
        if chooser is not None:
            chooser.add(table)

    try:
        plan = profile_database(source, chosen, progress, on_table=on_table, on_plan=on_plan)
        cache = handoff.commit(plan.source_sha256, source.stat().st_size)
    except BaseException:
        handoff.discard()
        if preparer is not None:
            preparer.discard()
        if chooser is not None:
            chooser.close()
        raise
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dry-run") as background:
        # The dry run needs only the plan: it runs while the counts are gathered and the gates scored.
        dry_run = background.submit(dry_run_gate, source, plan, dsn, chooser) if chooser and dsn is not None else None
        plan_path = plan.write(run_dir / "plan.json")
        measured = measured_source(source, plan, handoff.loader(cache), cache, preparer)

        def counted() -> Any:
            """The frames' source (one for every thread), else the file's (one per thread, sharing counts)."""
            return measured if measured is not None else sqlite_source(source)

        questions.ask(counted, plan)
        score, rules = concurrently(
            lambda: score_quality(counted(), plan),
            lambda: evaluate_rules(counted(), plan, questions.packs, questions.mapping, now=questions.now),
        )
        dry_run_result = dry_run.result() if dry_run is not None else None
    handoff.release()
    gates = [type_confidence_gate(plan, settings), circuit_breaker_gate(plan, settings)]
    if dry_run_result is not None:
        gates.append(dry_run_result)
    gates.append(quality_score_gate(score, rules, settings))
    report_path = write_profile_report(plan, gates, score, rules, run_dir / "profile_report.md")
    json_path = write_profile_json(plan, gates, score, rules, run_dir / "profile_report.json")
    artifact = ProfileArtifact(source, plan_path, report_path, score.score, dict(score.dimensions))
    metadata = {
        "tables": len(plan.tables),
        "columns": sum(len(table.columns) for table in plan.tables),
        "rows": sum(table.row_count for table in plan.tables),
        "plan": str(plan_path),
        "report": str(report_path),
        "report_json": str(json_path),
        "quality_score": score.score,
        "dimensions": dict(score.dimensions),
        "rules_score": rules.score,
    }
    return StepOutcome(artifact, tuple(gates), metadata, elapsed_since(start))


class GateQuestions:
    """What the scorer and the rule engine ask a table source, gathered so that each table's counts
    are asked once (`ask`), or counted ahead as each table's plan is decided (`asked_ahead`).

    The counts are kept by the source, per measure: `score_quality` and `evaluate_rules` then find
    them counted. The rules are judged at `now`, fixed here, so the measures asked ahead are the ones
    they ask."""

    def __init__(self, packs: Sequence[Path] | None, mapping: Path | None, now: datetime | None = None) -> None:
        """Reads the packs and the mapping once, so an unusable one stops a run before any table is read."""
        from servicedesk_etl.profiling.rules import load_mapping, load_pack, shipped_pack_paths

        self.packs = None if packs is None else list(packs)
        self.mapping = mapping
        self.now = now or datetime.now(UTC).replace(tzinfo=None)
        for path in shipped_pack_paths() if self.packs is None else self.packs:
            load_pack(path)
        if mapping is not None:
            load_mapping(mapping)

    def questions(self, source: Any, plan: Plan) -> tuple[dict[str, list[Any]], list[Any]]:
        """What both ask, without counting: the measures of each table (physical name, each once, in
        the order they ask them) and the references whose orphans they count (each once)."""
        from servicedesk_etl.profiling.rules import rule_questions
        from servicedesk_etl.profiling.score import score_questions

        score_measures, score_links = score_questions(source, plan)
        rule_measures, rule_links = rule_questions(source, plan, self.packs, self.mapping, now=self.now)
        measures: dict[str, list[Any]] = {}
        for wanted in (score_measures, rule_measures):
            for table, asked in wanted.items():
                measures.setdefault(table, []).extend(asked)
        unique = {table: list(dict.fromkeys(asked)) for table, asked in measures.items()}
        return unique, list(dict.fromkeys([*score_links, *rule_links]))

    def ask(self, source_for: Callable[[], Any], plan: Plan) -> None:
        """Each table's measures asked in one call, two tables at a time, each of `source_for()`."""
        from servicedesk_etl.profiling.sources import DEFAULT_NULL_MARKERS

        markers = tuple(plan.settings.get("null_markers", DEFAULT_NULL_MARKERS))

        def count(table: str, measures: list[Any]) -> None:
            source = source_for()
            with source.connected():
                source.measure(table, measures, markers)

        probe = source_for()
        with probe.connected():
            wanted, _ = self.questions(probe, plan)
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="questions") as pool:
            for future in [pool.submit(count, table, measures) for table, measures in wanted.items()]:
                future.result()

    def asked_ahead(self, preparer: Any, settings: Any) -> Callable[[TablePlan], None]:
        """A profiler `on_plan` hook: as each table's plan is decided, the measures whose distinct
        tables `preparer` has built are counted on its thread (`FramePreparer.count_ahead`) while the
        profiler reads on, with the orphans of each link between two tables decided by then. Tables
        not decided yet stand in the plan without columns."""
        source = preparer.source
        markers = tuple(settings.null_markers)
        decided: dict[str, TablePlan] = {}

        def on_plan(table: TablePlan) -> None:
            decided[table.name] = table
            known = [decided.get(name) or TablePlan(name, name, 0, ()) for name in source.tables()]
            partial = Plan("", "", "", tuple(known), {"null_markers": list(markers)})

            def questions() -> tuple[list[Any], list[Any]]:
                """The table's measures, and the links it ends that join two tables decided by now."""
                measures, links = self.questions(source, partial)
                ends = [link for link in links if table.name in (link.child_table, link.parent_table)]
                return measures.get(table.name, []), ends

            preparer.count_ahead(table.name, questions, markers)

        return on_plan


def frames_memory_budget() -> int:
    """How much of the profiled frames the scorer may keep in memory: a quarter of what is free, at most 256 MiB."""
    import psutil

    return min(FRAMES_KEPT_IN_MEMORY, psutil.virtual_memory().available // 4)


def measured_source(path: Path, plan: Plan, loader: Any, cache: Any, preparer: Any = None) -> Any:
    """A table source that answers the scorer and the rules from frames already read (one instance,
    shared by their threads), or None when some table is not in them (sampled) or the file compares
    text in a way only SQLite itself reproduces: then each asks the file. A `FramePreparer` that saw
    the frames as they were read gives its source, whose distinct tables are already built."""
    from servicedesk_etl.profiling.frame_source import FrameSource, UnsupportedSchema, sqlite_schema

    tables = [table.name for table in plan.tables]
    if not all(cache.has_table(table) for table in tables):
        if preparer is not None:
            preparer.discard()
        return None
    if preparer is not None:
        prepared = preparer.finish(loader)
        if set(prepared.tables()) == set(tables):
            return prepared
        prepared.close()
    try:
        schema = sqlite_schema(path)
    except UnsupportedSchema as reason:
        log.info("scoring %s in SQLite itself: %s", path, reason)
        return None
    return FrameSource({table: schema[table] for table in tables}, loader, label=f"sqlite:{path}", file=path)


def profile_settings(settings: PipelineSettings) -> Any:
    """The profiler's settings implied by the gates' (a typed reading needs `min_typed_confidence`)."""
    from servicedesk_etl.profiling.infer import ProfileSettings

    return ProfileSettings(day_first_default=settings.day_first_default,
                           min_typed_confidence=settings.min_typed_confidence,
                           min_declared_confidence=settings.min_declared_confidence)


def rule_packs(settings: PipelineSettings) -> list[Path]:
    """The shipped rule packs, with the user's added; a user pack named like a shipped one replaces it."""
    from servicedesk_etl.profiling.rules import shipped_pack_paths

    users = [Path(path).expanduser() for path in settings.rule_packs]
    replaced = {path.name for path in users}
    return [path for path in shipped_pack_paths() if path.name not in replaced] + users


def rule_mapping(settings: PipelineSettings) -> Path | None:
    return Path(settings.rule_mapping).expanduser() if settings.rule_mapping else None


def type_confidence_gate(plan: Plan, settings: PipelineSettings) -> GateResult:
    columns = [(table, column) for table in plan.tables for column in table.columns]
    failing = [
        {"table": table.name, "column": column.name, "target_type": column.target_type,
         "confidence": round(column.confidence, 4), "counterexamples": list(column.profile.counterexamples)}
        for table, column in columns
        if column.confidence < settings.min_type_confidence
    ]
    lowest = min((column.confidence for _, column in columns), default=1.0)
    summary = (
        f"every one of {len(columns)} columns converts at >= {settings.min_type_confidence:.0%} (lowest {lowest:.2%})"
        if not failing
        else f"{len(failing)} column(s) below {settings.min_type_confidence:.0%}: "
        + ", ".join(f"{f['table']}.{f['column']} {f['confidence']:.2%}{_for_example(f['counterexamples'])}"
                    for f in failing[:5])
    )
    return GateResult(
        "type_confidence",
        passed=not failing,
        summary=summary,
        metadata={"columns": len(columns), "lowest_confidence": round(lowest, 4),
                  "threshold": settings.min_type_confidence, "failing_columns": failing},
    )


def circuit_breaker_gate(plan: Plan, settings: PipelineSettings) -> GateResult:
    tripped = []
    worst = 0.0
    for table in plan.tables:
        for column in table.columns:
            attempted = column.profile.convertible + column.profile.unconvertible
            share = column.profile.unconvertible / attempted if attempted else 0.0
            worst = max(worst, share)
            if share > settings.max_unconvertible_share:
                tripped.append({"table": table.name, "column": column.name, "unconvertible_share": round(share, 4),
                                "counterexamples": list(column.profile.counterexamples)})
    summary = (
        f"no column is more than {settings.max_unconvertible_share:.0%} unconvertible (worst {worst:.2%})"
        if not tripped
        else "halted: " + ", ".join(
            f"{t['table']}.{t['column']} {t['unconvertible_share']:.0%} unconvertible{_for_example(t['counterexamples'])}"
            for t in tripped[:5])
    )
    return GateResult(
        "circuit_breaker",
        passed=not tripped,
        summary=summary,
        metadata={"worst_unconvertible_share": round(worst, 4), "threshold": settings.max_unconvertible_share,
                  "tripped_columns": tripped},
    )


def _for_example(counterexamples: list[str]) -> str:
    return f" (e.g. {', '.join(repr(value) for value in counterexamples[:3])})" if counterexamples else ""


def dry_run_gate(source: Path, plan: Plan, dsn: str, chooser: Any = None) -> GateResult:
    """The plan run on a sample (`chooser`: a `dryrun.SampleChooser` that chose it while profiling)."""
    from servicedesk_etl.dryrun import dry_run

    report = dry_run(source, plan, dsn, chooser=chooser)
    return GateResult(
        "dry_run",
        passed=report.ok,
        summary=report.summary,
        metadata=jsonable(report),
    )


def quality_score_gate(score: Any, rules: Any, settings: PipelineSettings) -> GateResult:
    """The snapshot's score and rule results: a warning, never a stop (cleaning is what fixes them)."""
    counts = {status: len(rules.with_status(status)) for status in ("pass", "fail", "not_evaluated", "not_applicable")}
    failing = [
        {"rule": r.rule_id, "name": r.name, "observed": r.observed, "threshold": r.threshold, "message": r.message}
        for r in rules.with_status("fail")
    ]
    not_evaluated = [{"rule": r.rule_id, "name": r.name, "missing": list(r.missing)} for r in rules.with_status("not_evaluated")]
    return GateResult(
        "quality_score",
        passed=score.score >= settings.min_quality_score,
        summary=f"snapshot scores {score.score:.1f}/100 ({score.grade}); rules {counts['pass']} pass, "
        f"{counts['fail']} fail, {counts['not_evaluated']} not evaluated (rule score {rules.score:.1f})",
        metadata={"score": score.score, "grade": score.grade, "dimensions": dict(score.dimensions),
                  "rule_score": rules.score, "rules": counts, "failing_rules": failing,
                  "rules_not_evaluated": not_evaluated},
        blocking=False,
    )


# --- step 3: cleaned_db ----------------------------------------------------------------------


def clean_step(
    source: Path,
    plan_path: Path,
    output: Path,
    *,
    score_before: float,
    dimensions_before: dict[str, float] | None = None,
    snapshot_sha256: str | None = None,
    settings: PipelineSettings,
    progress: Progress | None = None,
    health_check: HealthCheck | None = None,
    force: bool = False,
    keep_for_loading: bool = True,
) -> StepOutcome[CleanedArtifact]:
    """Execute the plan into a new SQLite file and gate on quality, reconciliation and an untouched source.

    `snapshot_sha256` is the checksum of the snapshot the user gave (the version records it); by
    default, that of `source`. With `keep_for_loading`, the cleaned tables' stored cache stays beside
    the output (see `reconcile.stored_cache_of`) for the load gates, unless a gate stops the run.
    """
    from servicedesk_etl.cleaning import CleanSettings, clean_snapshot
    from servicedesk_etl.profiling.score import score_quality, sqlite_source
    from servicedesk_etl.raw_cache import open_raw_cache
    from servicedesk_etl.reconcile import stored_cache_of

    start = time.perf_counter()
    plan = read_plan(plan_path)
    profiled = Path(plan_path).parent / RAW_CACHE_DIR
    raw = open_raw_cache(profiled, plan.source_sha256) if plan.source_sha256 else None
    stored_dir = stored_cache_of(output)
    try:
        result = clean_snapshot(
            source,
            plan,
            output,
            settings=CleanSettings(duplicate_policy=settings.duplicate_policy, check_every_rows=settings.check_every_rows),
            progress=progress,
            health_check=health_check,
            force=force,
            raw_cache=raw,
            stored_cache_dir=stored_dir,
        )
        stored = result.stored_cache
        measured = measured_source(result.output, plan, stored.read, stored) if stored is not None else None
        after = score_quality(measured or sqlite_source(result.output), plan)
    except BaseException:
        shutil.rmtree(stored_dir, ignore_errors=True)
        raise
    if raw is not None:
        shutil.rmtree(profiled, ignore_errors=True)  # served its one purpose
    unbalanced = [jsonable(entry) for entry in result.reconciliation if not entry.balanced]
    quarantined = quarantined_per_table(result.output)
    gates = (
        GateResult(
            "quality_gate",
            passed=after.score >= settings.min_quality_score,
            summary=f"cleaned file scores {after.score:.1f}/100 ({after.grade}); threshold {settings.min_quality_score:g}",
            metadata={"score": after.score, "grade": after.grade, "threshold": settings.min_quality_score,
                      "dimensions_before": dict(dimensions_before or {}), "dimensions_after": dict(after.dimensions)},
        ),
        GateResult(
            "source_unchanged",
            passed=result.source_unchanged,
            summary="source checksum identical before and after" if result.source_unchanged
            else "the source file changed while it was cleaned",
            metadata={"sha256_before": result.source_sha256_before, "sha256_after": result.source_sha256_after},
        ),
        GateResult(
            "quality_improved",
            passed=after.score >= score_before,
            summary=f"score {score_before:.1f} -> {after.score:.1f} ({after.score - score_before:+.1f})",
            metadata={"before": score_before, "after": after.score, "gain": round(after.score - score_before, 3)},
        ),
        GateResult(
            "cells_reconciled",
            passed=result.reconciled,
            summary=f"every non-null source cell accounted for in {len(result.reconciliation)} columns"
            if result.reconciled
            else f"{len(unbalanced)} column(s) do not balance",
            metadata={"columns": len(result.reconciliation), "unbalanced": unbalanced[:20],
                      "quarantined_cells": result.quarantined_cells, "nulled_cells": result.nulled_cells,
                      "converted_cells": result.converted_cells,
                      "duplicates_removed": dict(result.duplicates_removed)},
        ),
    )
    if not keep_for_loading or any(gate.stops_the_run for gate in gates):
        shutil.rmtree(stored_dir, ignore_errors=True)
    artifact = CleanedArtifact(result.output, plan_path, snapshot_sha256 or result.source_sha256_before,
                               dict(result.rows_out), after.score)
    metadata = {
        "rows": sum(result.rows_out.values()),
        "rows_per_table": dict(result.rows_out),
        "quarantined_cells": result.quarantined_cells,
        "quarantined_per_table": {table: quarantined.get(table, 0) for table in result.rows_out},
        "converted_cells": result.converted_cells,
        "nulled_cells": result.nulled_cells,
        "quality_score": after.score,
        "dimensions": dict(after.dimensions),
        "path": str(result.output),
    }
    return StepOutcome(artifact, gates, metadata, elapsed_since(start))


def quarantined_per_table(cleaned: Path) -> dict[str, int]:
    """Cells the cleaner put in `_quarantine`, per table (whole duplicate rows not counted as cells)."""
    from contextlib import closing

    from servicedesk_etl.cleaning import QUARANTINE_TABLE
    from servicedesk_etl.sqlite_source import open_readonly, quote_ident

    with closing(open_readonly(cleaned)) as conn:
        rows = conn.execute(
            f"SELECT table_name, count(*) FROM {quote_ident(QUARANTINE_TABLE)} "
            "WHERE column_name IS NOT NULL GROUP BY table_name"
        ).fetchall()
    return {table: count for table, count in rows}


# --- steps 4 and 5: canary_schema, production_schema -----------------------------------------


def load_gates(prefix: str, cleaned: CleanedArtifact, plan: Plan, dsn: str, schema: str,
               sample_percent: float | None) -> list[GateResult]:
    """Types, reconciliation and dashboard queries of a loaded schema against the cleaned file
    (its values read from the cleaner's stored cache when that is of this very file)."""
    from servicedesk_etl.query_templates import run_query_templates
    from servicedesk_etl.reconcile import reconcile_schema, stored_cache_of

    report, queries = concurrently(
        lambda: reconcile_schema(cleaned.path, plan, dsn, schema, sample_percent=sample_percent,
                                 stored_cache=stored_cache_of(cleaned.path)),
        lambda: run_query_templates(dsn, schema),
    )
    return load_gate_results(prefix, report, queries)


def load_gate_results(prefix: str, report: Any, queries: Any) -> list[GateResult]:
    """The types, reconciliation and query gates from a reconciliation report and the query runs."""
    from servicedesk_etl.query_templates import FAILED, OK

    failed_queries = [run for run in queries if run.status == FAILED]
    type_problems = [jsonable(problem) for problem in report.type_mismatches]
    return [
        GateResult(
            f"{prefix}_types",
            passed=not type_problems,
            summary="every column has its planned PostgreSQL type" if not type_problems
            else f"{len(type_problems)} column(s) without their planned type",
            metadata={"mismatches": type_problems},
        ),
        GateResult(
            f"{prefix}_reconciled",
            passed=report.ok,
            summary=report.summary,
            metadata=jsonable(report.to_metadata()),
        ),
        GateResult(
            f"{prefix}_queries",
            passed=not failed_queries,
            summary=f"{sum(1 for run in queries if run.status == OK)} dashboard queries ran"
            + (f"; {len(failed_queries)} failed: " + ", ".join(run.name for run in failed_queries) if failed_queries else ""),
            metadata={"queries": [jsonable(run) for run in queries]},
        ),
    ]


def with_health(progress: Progress | None, health_check: HealthCheck | None) -> Progress | None:
    """One per-chunk callback for a long step: report progress, then check disk, memory and connection."""
    if health_check is None:
        return progress

    def report(table: str, done: int, total: int) -> None:
        if progress is not None:
            progress(table, done, total)
        health_check()

    return report


def canary_step(cleaned: CleanedArtifact, *, dsn: str, run_id: str, settings: PipelineSettings,
                progress: Progress | None = None, health_check: HealthCheck | None = None) -> StepOutcome[SchemaArtifact]:
    """Load a deterministic sample into a canary schema; drop it when its gates pass, keep it when not."""
    from servicedesk_etl.cutover import drop_leftovers
    from servicedesk_etl.loading import canary_schema_name, load_schema
    from servicedesk_etl.reconcile import stored_cache_of

    start = time.perf_counter()
    plan = read_plan(cleaned.plan_path)
    dropped = drop_leftovers(dsn)
    schema = canary_schema_name(run_id)
    drop_schema(dsn, schema)
    load = load_schema(cleaned.path, plan, dsn, schema, sample_percent=settings.canary_percent,
                       max_workers=settings.load_workers, progress=with_health(progress, health_check))
    gates = load_gates("canary", cleaned, plan, dsn, schema, settings.canary_percent)
    passed = not any(gate.stops_the_run for gate in gates)
    if passed:
        drop_schema(dsn, schema)
    else:
        shutil.rmtree(stored_cache_of(cleaned.path), ignore_errors=True)  # the run stops here
    rows = {entry.table: entry.rows for entry in load.tables}
    metadata = {"schema": schema, "rows": load.rows, "rows_per_table": rows, "kept_for_inspection": not passed,
                "leftovers_dropped": dropped, "load_seconds": load.seconds}
    return StepOutcome(SchemaArtifact(schema, rows, live=False), tuple(gates), metadata, elapsed_since(start))


def production_step(cleaned: CleanedArtifact, *, dsn: str, settings: PipelineSettings, backup_dir: Path,
                    progress: Progress | None = None,
                    health_check: HealthCheck | None = None) -> StepOutcome[SchemaArtifact]:
    """Load everything into a new version schema; only when its gates pass, back up the live schema and cut over.

    The cleaned file's stored cache (kept by `clean_step` for the load gates) is removed at the end.
    """
    from servicedesk_etl.backup import pg_dump_schema
    from servicedesk_etl.cutover import mark_loading, promote, register_version
    from servicedesk_etl.loading import load_schema, version_schema_name
    from servicedesk_etl.profiling.score import postgres_source, score_quality
    from servicedesk_etl.query_templates import run_query_templates
    from servicedesk_etl.reconcile import reconcile_schema, stored_cache_of

    start = time.perf_counter()
    plan = read_plan(cleaned.plan_path)
    schema = version_schema_name()
    stored = stored_cache_of(cleaned.path)
    mark_loading(dsn, schema)
    try:
        load = load_schema(cleaned.path, plan, dsn, schema, max_workers=settings.load_workers,
                           progress=with_health(progress, health_check))
        rows = {entry.table: entry.rows for entry in load.tables}
        register_version(dsn, schema, source_sha256=cleaned.source_sha256, row_counts=rows)
        report, queries, loaded = concurrently(
            lambda: reconcile_schema(cleaned.path, plan, dsn, schema, sample_percent=None, stored_cache=stored),
            lambda: run_query_templates(dsn, schema),
            lambda: score_quality(postgres_source(dsn, schema), plan),
        )
    finally:
        shutil.rmtree(stored, ignore_errors=True)
    gates = load_gate_results("production", report, queries)
    gates.append(
        GateResult(
            "production_quality",
            passed=loaded.score >= cleaned.quality_score,
            summary=f"loaded data scores {loaded.score:.1f} vs cleaned file {cleaned.quality_score:.1f}",
            metadata={"score": loaded.score, "cleaned_score": cleaned.quality_score,
                      "dimensions": dict(loaded.dimensions)},
        )
    )
    metadata: dict[str, Any] = {"schema": schema, "rows": load.rows, "rows_per_table": rows,
                                "load_seconds": load.seconds,
                                "rows_per_second": round(load.rows / load.seconds) if load.seconds else None}
    if any(gate.stops_the_run for gate in gates):
        metadata["live"] = False
        return StepOutcome(SchemaArtifact(schema, rows, live=False), tuple(gates), metadata, elapsed_since(start))
    if schema_exists(dsn, LIVE_SCHEMA):
        dump = pg_dump_schema(dsn, LIVE_SCHEMA, backup_dir)
        metadata.update({"live_schema_backup": str(dump.path), "live_schema_backup_sha256": dump.sha256})
    cutover = promote(dsn, schema, keep=settings.keep_versions)
    metadata.update({"live": True, "previous_live": cutover.previous_version, "dropped_versions": list(cutover.dropped)})
    artifact = SchemaArtifact(schema, rows, live=True, previous_live=cutover.previous_version)
    return StepOutcome(artifact, tuple(gates), metadata, elapsed_since(start))
