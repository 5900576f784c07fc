-- The team's dashboard queries over the ServiceDesk tables, with the export's real column names.
--
-- Each template starts with `-- name: <name>`, then `-- tables: <table>, ...` (the tables it
-- needs; when one is absent the template is "not applicable", not failed) and an optional
-- `-- description:`. Table names are unqualified: the runner sets `search_path` to the schema
-- being checked (`servicedesk` in production, a canary or version schema before cutover), so the
-- same text runs everywhere. In Grafana, prefix the tables with `servicedesk.` or set the
-- data source's search_path.
--
-- PostgreSQL is strict: ROUND(x, 2) needs numeric, so averages and sums of floating values go
-- through ::numeric before ROUND. Casts are otherwise avoided on purpose: a date column that
-- landed as TEXT must make these queries fail here, not on a dashboard.

-- name: ticket_totals
-- tables: tickets
-- description: total tickets and how many are still open
SELECT count(*) AS total_tickets,
       count(*) FILTER (WHERE lower("TKT-Status") NOT IN ('closed', 'resolved', 'cancelled')) AS open_tickets,
       count(*) FILTER (WHERE "TKT-Actual Resolution Date" IS NOT NULL) AS resolved_tickets
FROM tickets;

-- name: open_tickets
-- tables: tickets
-- description: open tickets, oldest first, with their age in days
SELECT "TKT-Ticket ID", "TKT-Title", "TKT-Status", "TKT-Severity", "TKT-Team", "TKT-Assigned To User",
       "TKT-Created Time",
       ROUND((EXTRACT(EPOCH FROM (LOCALTIMESTAMP - "TKT-Created Time")) / 86400)::numeric, 1) AS age_days
FROM tickets
WHERE lower("TKT-Status") NOT IN ('closed', 'resolved', 'cancelled')
ORDER BY "TKT-Created Time"
LIMIT 500;

-- name: average_resolution_time
-- tables: tickets
-- description: mean and median hours from creation to actual resolution
SELECT count(*) AS resolved_tickets,
       ROUND(AVG(EXTRACT(EPOCH FROM ("TKT-Actual Resolution Date" - "TKT-Created Time")) / 3600)::numeric, 2)
           AS avg_resolution_hours,
       ROUND((percentile_cont(0.5) WITHIN GROUP (
           ORDER BY EXTRACT(EPOCH FROM ("TKT-Actual Resolution Date" - "TKT-Created Time")) / 3600))::numeric, 2)
           AS median_resolution_hours
FROM tickets
WHERE "TKT-Actual Resolution Date" IS NOT NULL AND "TKT-Created Time" IS NOT NULL;

-- name: tickets_per_day
-- tables: tickets
-- description: ticket volume per calendar day of creation
SELECT CAST(date_trunc('day', "TKT-Created Time") AS date) AS day, count(*) AS tickets
FROM tickets
WHERE "TKT-Created Time" IS NOT NULL
GROUP BY 1
ORDER BY 1;

-- name: status_breakdown
-- tables: tickets
SELECT coalesce("TKT-Status", '(none)') AS status, count(*) AS tickets,
       ROUND(100.0 * count(*) / sum(count(*)) OVER (), 2) AS pct
FROM tickets
GROUP BY 1
ORDER BY tickets DESC;

-- name: severity_breakdown
-- tables: tickets
SELECT coalesce("TKT-Severity", '(none)') AS severity, count(*) AS tickets,
       count(*) FILTER (WHERE lower("TKT-Status") NOT IN ('closed', 'resolved', 'cancelled')) AS open_tickets,
       ROUND(100.0 * count(*) / sum(count(*)) OVER (), 2) AS pct
FROM tickets
GROUP BY 1
ORDER BY 1;

-- name: team_breakdown
-- tables: tickets
SELECT coalesce("TKT-Team", '(unassigned)') AS team, count(*) AS tickets,
       count(*) FILTER (WHERE lower("TKT-Status") NOT IN ('closed', 'resolved', 'cancelled')) AS open_tickets,
       ROUND(AVG(EXTRACT(EPOCH FROM ("TKT-Actual Resolution Date" - "TKT-Created Time")) / 3600)::numeric, 2)
           AS avg_resolution_hours
FROM tickets
GROUP BY 1
ORDER BY tickets DESC;

-- name: sla_compliance
-- tables: tickets
-- description: share of tickets with a known SLA outcome that met it ("TKT-SLA Met" is boolean)
SELECT count(*) FILTER (WHERE "TKT-SLA Met") AS sla_met,
       count(*) FILTER (WHERE NOT "TKT-SLA Met") AS sla_missed,
       count(*) FILTER (WHERE "TKT-SLA Met" IS NULL) AS sla_unknown,
       ROUND(100.0 * count(*) FILTER (WHERE "TKT-SLA Met") / NULLIF(count("TKT-SLA Met"), 0), 2) AS sla_met_pct
FROM tickets;

-- name: sla_compliance_by_severity
-- tables: tickets
SELECT coalesce("TKT-Severity", '(none)') AS severity,
       ROUND(100.0 * count(*) FILTER (WHERE "TKT-SLA Met") / NULLIF(count("TKT-SLA Met"), 0), 2) AS sla_met_pct,
       count("TKT-SLA Met") AS tickets_with_sla
FROM tickets
GROUP BY 1
ORDER BY 1;

-- name: agent_workload
-- tables: tickets
-- description: tickets per assignee, open ones, and their mean resolution hours
SELECT coalesce("TKT-Assigned To User", '(unassigned)') AS agent, count(*) AS tickets,
       count(*) FILTER (WHERE lower("TKT-Status") NOT IN ('closed', 'resolved', 'cancelled')) AS open_tickets,
       ROUND(AVG(EXTRACT(EPOCH FROM ("TKT-Actual Resolution Date" - "TKT-Created Time")) / 3600)::numeric, 2)
           AS avg_resolution_hours
FROM tickets
GROUP BY 1
ORDER BY tickets DESC;

-- name: resolution_time_percentiles
-- tables: tickets
SELECT coalesce("TKT-Severity", '(none)') AS severity, count(*) AS resolved_tickets,
       ROUND((percentile_cont(0.5) WITHIN GROUP (ORDER BY hours))::numeric, 2) AS p50_hours,
       ROUND((percentile_cont(0.9) WITHIN GROUP (ORDER BY hours))::numeric, 2) AS p90_hours,
       ROUND((percentile_cont(0.95) WITHIN GROUP (ORDER BY hours))::numeric, 2) AS p95_hours
FROM (
    SELECT "TKT-Severity", EXTRACT(EPOCH FROM ("TKT-Actual Resolution Date" - "TKT-Created Time")) / 3600 AS hours
    FROM tickets
    WHERE "TKT-Actual Resolution Date" IS NOT NULL AND "TKT-Created Time" IS NOT NULL
) AS resolved
GROUP BY 1
ORDER BY 1;

-- name: comments_per_ticket
-- tables: comments, tickets
-- description: mean comments per ticket, and comments whose ticket is missing (orphans)
SELECT (SELECT count(*) FROM comments) AS comments,
       ROUND((SELECT AVG(n) FROM (SELECT count(*) AS n FROM comments GROUP BY ticket_id) AS per_ticket)::numeric, 2)
           AS avg_comments_per_ticket,
       (SELECT count(*) FROM comments c
         WHERE NOT EXISTS (SELECT 1 FROM tickets t WHERE t."TKT-Ticket ID" = c.ticket_id)) AS orphan_comments;

-- name: timesheet_hours_by_account
-- tables: timesheets
SELECT coalesce("TS-Account Name", '(none)') AS account, count(*) AS entries,
       ROUND(SUM("TS-Hours")::numeric, 2) AS hours,
       ROUND(AVG("TS-Hours")::numeric, 2) AS avg_hours_per_entry
FROM timesheets
GROUP BY 1
ORDER BY hours DESC NULLS LAST;

-- name: admin_time_share
-- tables: timesheets
-- description: share of logged hours not against a ticket ("TS-Crm ID" = 0 means admin time)
SELECT ROUND(SUM("TS-Hours") FILTER (WHERE "TS-Crm ID" = 0)::numeric, 2) AS admin_hours,
       ROUND(SUM("TS-Hours")::numeric, 2) AS total_hours,
       ROUND((100 * SUM("TS-Hours") FILTER (WHERE "TS-Crm ID" = 0) / NULLIF(SUM("TS-Hours"), 0))::numeric, 2)
           AS admin_share_pct
FROM timesheets;

-- name: agent_timesheet_hours
-- tables: timesheets
SELECT coalesce("TS-User Full Name", '(none)') AS agent, count(*) AS entries,
       ROUND(SUM("TS-Hours")::numeric, 2) AS hours,
       ROUND(AVG("TS-Hours")::numeric, 2) AS avg_hours_per_entry,
       count(DISTINCT CAST(date_trunc('day', "TS-Date") AS date)) AS days_logged
FROM timesheets
GROUP BY 1
ORDER BY hours DESC NULLS LAST;

-- name: hours_per_ticket
-- tables: timesheets, tickets
SELECT t."TKT-Ticket ID", t."TKT-Severity", count(*) AS entries, ROUND(SUM(s."TS-Hours")::numeric, 2) AS hours
FROM timesheets s
JOIN tickets t ON t."TKT-Ticket ID" = s."TS-Crm ID"
GROUP BY 1, 2
ORDER BY hours DESC NULLS LAST
LIMIT 100;

-- name: data_freshness
-- tables: tickets
-- description: the newest ticket and modification, and how old they are
SELECT max("TKT-Created Time") AS newest_ticket,
       max("TKT-Modified Time") AS newest_modification,
       LOCALTIMESTAMP - max("TKT-Modified Time") AS modification_lag
FROM tickets;

-- name: ticket_null_rates
-- tables: tickets
-- description: percentage of NULLs in the columns the dashboards depend on
SELECT count(*) AS tickets,
       ROUND(100.0 * count(*) FILTER (WHERE "TKT-Created Time" IS NULL) / NULLIF(count(*), 0), 2) AS created_time_null_pct,
       ROUND(100.0 * count(*) FILTER (WHERE "TKT-Status" IS NULL) / NULLIF(count(*), 0), 2) AS status_null_pct,
       ROUND(100.0 * count(*) FILTER (WHERE "TKT-Team" IS NULL) / NULLIF(count(*), 0), 2) AS team_null_pct,
       ROUND(100.0 * count(*) FILTER (WHERE "TKT-Assigned To User" IS NULL) / NULLIF(count(*), 0), 2) AS assignee_null_pct,
       ROUND(100.0 * count(*) FILTER (WHERE "TKT-SLA Met" IS NULL) / NULLIF(count(*), 0), 2) AS sla_met_null_pct
FROM tickets;

-- name: timesheet_null_rates
-- tables: timesheets
SELECT count(*) AS entries,
       ROUND(100.0 * count(*) FILTER (WHERE "TS-Date" IS NULL) / NULLIF(count(*), 0), 2) AS date_null_pct,
       ROUND(100.0 * count(*) FILTER (WHERE "TS-Hours" IS NULL) / NULLIF(count(*), 0), 2) AS hours_null_pct,
       ROUND(100.0 * count(*) FILTER (WHERE "TS-Crm ID" IS NULL) / NULLIF(count(*), 0), 2) AS crm_id_null_pct
FROM timesheets;
