"""Jobs: the whole migration graph, and the rollback of the live schema."""

import dagster as dg

from servicedesk_etl.resources import PostgresTarget

MIGRATION_JOB = "servicedesk_migration"
ROLLBACK_JOB = "servicedesk_rollback"

migration_job = dg.define_asset_job(
    MIGRATION_JOB,
    selection=dg.AssetSelection.all(),
    description="Snapshot -> backup -> profile -> clean -> canary -> production, every gate blocking.",
)


@dg.op(description="Swap the previous version back in as `servicedesk`, in one transaction.")
def rollback_live_schema(context: dg.OpExecutionContext, target: PostgresTarget) -> dg.Output[str]:
    from servicedesk_etl.cutover import rollback

    result = rollback(target.dsn())
    context.log.info("servicedesk now serves %s (was %s)", result.live_version, result.previous_version)
    yield dg.AssetObservation(
        asset_key="production_schema",
        metadata={"event": "rollback", "live_version": result.live_version,
                  "replaced_version": result.previous_version or "", "seconds": round(result.seconds, 3)},
    )
    yield dg.Output(result.live_version)


@dg.job(name=ROLLBACK_JOB, description="Roll the live `servicedesk` schema back to the previous version.")
def rollback_job() -> None:
    rollback_live_schema()
