"""A synthetic ServiceDesk snapshot with planted defects, and the truth file that lists them.

The snapshot looks like the real export after the pandas importer: three tables (`tickets`,
`comments`, `timesheets`) declared TEXT / INTEGER / REAL / TIMESTAMP, no keys. Clean rows are built
column by column with polars from seeded draws and inserted in one transaction; then the sporadic
defects are written cell by cell (`UPDATE ... WHERE rowid = ?`), so each is one truth entry.

`PATH.truth.json` says what a correct pipeline must make of the file:
- `column_types`: the target type of every column;
- `cells`: every planted cell of the complete classes `dmy_datetime`, `mdy_datetime`,
  `empty_string`, `null_marker`, `whitespace`, `nul_byte`, `crlf`, `invalid_utf8` (raw bytes as
  `{"hex": ...}`). The classes in `SAMPLED_DEFECTS` (`number_as_text`, `yes_no`, `percentage`,
  `integral_float`) cover whole columns, so `cells` holds only the first `EXAMPLES_PER_COLUMN`
  rows of each such column;
- `counts`: the number of cells of each class in the file (sampled classes included), plus
  `duplicate_row` (extra copies) and `orphan`;
- `duplicate_rows` (identical rows, by rowid) and `orphans` (comments whose ticket is missing).
"""

from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from servicedesk_etl.errors import InputError
from servicedesk_etl.sqlite_source import quote_ident

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
FULL_SCALE_ROWS = {"tickets": 10_939, "comments": 108_129, "timesheets": 141_062}
KEY_COLUMNS: dict[str, str | None] = {"tickets": "TKT-Ticket ID", "comments": "comment_id", "timesheets": None}
SAMPLED_DEFECTS = frozenset({"number_as_text", "yes_no", "percentage", "integral_float"})
EXAMPLES_PER_COLUMN = 5
DMY_VALUES = 9
DMY_PROVING_DAY_FIRST = 6

NULL_MARKERS = ("N/A", "NULL", "-", "nan")
WHITESPACE_VALUES = (" ", "   ")
CP1252_EN_DASH = b"\x96"

FIRST_CREATED = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp())
LAST_CREATED = int(datetime(2025, 11, 30, tzinfo=UTC).timestamp())
FIRST_TICKET_ID = 1_000_000
ORPHAN_TICKET_IDS = (900_000, 1_000_000)
FIRST_COMMENT_ID = 5_000_001
HOUR = 3600
DAY = 86_400

ISO_FORMAT = "%Y-%m-%d %H:%M:%S"
MDY_FORMAT = "%m/%d/%Y %I:%M %p"


@dataclass(frozen=True)
class DemoSummary:
    path: Path
    truth_path: Path
    row_counts: dict[str, int]
    planted: dict[str, int]
    seconds: float


@dataclass(frozen=True)
class _Column:
    name: str
    declared: str
    target: str


@dataclass(frozen=True)
class _CellGroup:
    """Cells of one column with one defect: written into the file when `write`, always in the truth.

    `rows` are 0-based positions; `total` is the number of such cells in the file (more than
    `len(rows)` only for the sampled representation classes).
    """

    column: str
    defect: str
    rows: list[int]
    raw: list[Any]
    expected: list[Any]
    write: bool = True
    total: int | None = None


@dataclass(frozen=True)
class _Table:
    name: str
    columns: tuple[_Column, ...]
    frame: pl.DataFrame
    groups: tuple[_CellGroup, ...] = ()
    duplicates: tuple[tuple[int, ...], ...] = ()
    orphan_rows: tuple[int, ...] = ()


@dataclass(frozen=True)
class _TruthPart:
    """What truth.json says about one table, kept after the table's rows are written and dropped."""

    table: str
    rows: int
    column_types: dict[str, str]
    cells: list[dict[str, Any]]
    counts: Counter[str]
    duplicates: list[dict[str, Any]]
    orphans: list[dict[str, Any]]


def truth_path_for(path: Path) -> Path:
    """Where the truth file of the snapshot at `path` lives: `PATH.truth.json`."""
    path = Path(path)
    return path.with_name(path.name + ".truth.json")


def generate_demo_snapshot(path: Path, *, scale: float = 1.0, seed: int = 42) -> DemoSummary:
    """Write a ServiceDesk-like snapshot at `path` and its truth file; overwrite existing ones.

    At scale 1 the tables hold 10,939 / 108,129 / 141,062 rows; at scale s, `round(n * s)` each.
    The same seed gives the same rows and the same truth.
    """
    started = time.perf_counter()
    path = Path(path)
    row_counts = scaled_row_counts(scale)
    if path.is_dir():
        raise InputError(f"{path}: is a directory; give a file path for the demo snapshot")
    path.parent.mkdir(parents=True, exist_ok=True)

    parts: list[_TruthPart] = []
    _write_atomically(path, lambda temp: parts.extend(_write_database(temp, row_counts, scale=scale, seed=seed)))
    truth = _truth_document(parts, seed=seed, scale=scale)
    truth_path = truth_path_for(path)
    _write_atomically(truth_path, lambda temp: temp.write_text(json.dumps(truth, ensure_ascii=False), "utf-8"))

    seconds = time.perf_counter() - started
    logger.info("demo snapshot %s: %d rows, %d planted cells in %.2f s",
                path, sum(row_counts.values()), sum(truth["counts"].values()), seconds)
    return DemoSummary(path, truth_path, row_counts, dict(truth["counts"]), seconds)


def scaled_row_counts(scale: float) -> dict[str, int]:
    """Rows per table at `scale`; InputError when any table would be empty."""
    counts = {table: round(rows * scale) for table, rows in FULL_SCALE_ROWS.items()}
    if scale <= 0 or min(counts.values()) < 1:
        raise InputError(f"scale {scale} is too small: every table needs at least one row (try 0.001 or more)")
    return counts


# ---------------------------------------------------------------------------------------------
# Seeded draws


class _Draws:
    """Seeded random columns. Each draw is one polars `sample` seeded from a stdlib Random, so the
    same seed gives the same columns whatever the thread count."""

    _WORD = 1 << 16

    def __init__(self, seed: int) -> None:
        self._seeds = random.Random(seed)
        self._words = pl.int_range(0, self._WORD, eager=True, dtype=pl.Int64)

    def _seed(self) -> int:
        return self._seeds.getrandbits(63)

    def words(self, n: int) -> pl.Series:
        return self.sample(self._words, n)

    def uniform(self, n: int) -> pl.Series:
        """Floats in [0, 1) with 32 random bits."""
        return (self.words(n) * self._WORD + self.words(n)) / float(self._WORD**2)

    def integers(self, low: int, high: int, n: int) -> pl.Series:
        """Integers in [low, high)."""
        return (self.uniform(n) * (high - low)).floor().cast(pl.Int64) + low

    def chance(self, probability: float, n: int) -> pl.Series:
        return self.uniform(n) < probability

    def sample(self, population: pl.Series, n: int) -> pl.Series:
        """n values drawn from `population` with replacement."""
        return population.sample(n, with_replacement=True, seed=self._seed())

    def indices(self, weights: Sequence[int], n: int) -> pl.Series:
        """Positions 0..len(weights)-1 drawn in proportion to integer weights."""
        return self.sample(pl.Series([i for i, weight in enumerate(weights) for _ in range(weight)], dtype=pl.Int64), n)

    def choice(self, values: Sequence[Any], n: int, weights: Sequence[int] | None = None) -> pl.Series:
        return pl.Series(values).gather(self.indices(weights or [1] * len(values), n))

    def rows(self, eligible: pl.Series, k: int) -> list[int]:
        """Up to k distinct positions where `eligible` is true, ascending."""
        positions = eligible.arg_true()
        if k <= 0 or positions.len() == 0:
            return []
        picked = positions.sample(min(k, positions.len()), seed=self._seed())
        return sorted(picked.to_list())


def _planted_count(full_scale: int, scale: float, minimum: int = 1) -> int:
    return max(minimum, round(full_scale * scale))


def _iso(epoch: pl.Expr) -> pl.Expr:
    return pl.from_epoch(epoch, time_unit="s").dt.strftime(ISO_FORMAT)


def _yes_no(flag: pl.Expr) -> pl.Expr:
    return pl.when(flag).then(pl.lit("Yes")).otherwise(pl.lit("No"))


# ---------------------------------------------------------------------------------------------
# Vocabulary

AGENTS = (
    ("Olivia Chen", "ochen", 2101, "Service Desk"), ("Liam Walker", "lwalker", 2102, "Service Desk"),
    ("Amelia Singh", "asingh", 2103, "Service Desk"), ("Noah Kelly", "nkelly", 2104, "Service Desk"),
    ("Isla Nguyen", "inguyen", 2105, "Service Desk"), ("Jack Thompson", "jthompson", 2106, "Network Ops"),
    ("Mia Robinson", "mrobinson", 2107, "Network Ops"), ("Oliver Patel", "opatel", 2108, "Network Ops"),
    ("Charlotte Evans", "cevans", 2109, "Cloud Team"), ("William Brown", "wbrown", 2110, "Cloud Team"),
    ("Ava Martin", "amartin", 2111, "Cloud Team"), ("Henry Wilson", "hwilson", 2112, "Cloud Team"),
    ("Grace Taylor", "gtaylor", 2113, "Desktop Support"), ("Lucas White", "lwhite", 2114, "Desktop Support"),
    ("Zoe Harris", "zharris", 2115, "Desktop Support"), ("Ethan Clarke", "eclarke", 2116, "Applications"),
    ("Chloe Lewis", "clewis", 2117, "Applications"), ("James Young", "jyoung", 2118, "Applications"),
    ("Ruby King", "rking", 2119, "Security"), ("Thomas Wright", "twright", 2120, "Security"),
)
AGENT_WEIGHTS = (9, 8, 8, 7, 7, 5, 5, 4, 6, 5, 5, 4, 5, 4, 4, 3, 3, 3, 2, 2)
COSTCENTRES = {"Service Desk": 1100, "Network Ops": 1200, "Cloud Team": 1300, "Desktop Support": 1400,
               "Applications": 1500, "Security": 1600}
TEAMS = tuple(COSTCENTRES)
TEAM_WEIGHTS = (40, 14, 18, 14, 9, 5)

ACCOUNT_PREFIXES = ("Harbour", "Coastal", "Summit", "Redgum", "Southern", "Blue Gum", "Ironbark", "Meridian",
                    "Pacific", "Kestrel")
ACCOUNT_SUFFIXES = ("Logistics", "Health", "Legal", "Engineering", "Retail", "Council", "Finance", "Foods")
BILL_STATES = ("NSW", "VIC", "QLD", "WA", "SA", "TAS", "ACT")
FIRST_NAMES = ("Sarah", "David", "Emma", "Michael", "Jessica", "Daniel", "Laura", "Ben", "Sophie", "Matt",
               "Hannah", "Ryan", "Kate", "Josh", "Megan", "Sam")
LAST_NAMES = ("Smith", "Jones", "Williams", "Brown", "Wilson", "Taylor", "Johnson", "Lee", "Martin", "Anderson",
              "Ryan", "Murphy")

TICKET_TYPES = ("Incident", "Service Request", "Change", "Problem")
TICKET_TYPE_WEIGHTS = (55, 28, 12, 5)
STATUSES = ("Closed", "Resolved", "In Progress", "Open", "Pending")
STATUS_WEIGHTS = (70, 12, 8, 6, 4)
SEVERITIES = ("Sev 1 - Critical", "Sev 2 - High", "Sev 3 - Medium", "Sev 4 - Low")
SEVERITY_WEIGHTS = (4, 16, 50, 30)
SLA_HOURS = dict(zip(SEVERITIES, (4, 8, 24, 72), strict=True))
RESPONSE_MINUTES = dict(zip(SEVERITIES, (15, 30, 60, 240), strict=True))
PRIORITIES = dict(zip(SEVERITIES, ("P1", "P2", "P3", "P4"), strict=True))
IMPACTS = dict(zip(SEVERITIES, ("Enterprise", "Site", "Department", "User"), strict=True))
CATEGORIES = ("Hardware", "Software", "Network", "Access", "Email", "Cloud", "Printing", "Telephony")
SUB_CATEGORIES = ("Fault", "Install", "Configuration", "Password Reset", "Performance", "Outage", "Upgrade")
SOURCES = ("Email", "Portal", "Phone", "Monitoring", "Walk-in")
LOCATIONS = ("Sydney CBD", "Parramatta", "Melbourne", "Brisbane", "Perth", "Adelaide", "Remote")
ISSUES = ("Printer offline", "Cannot log in to VPN", "Outlook keeps crashing", "Slow network at branch",
          "New starter laptop", "Password reset request", "Server disk nearly full", "Teams calls dropping",
          "Firewall rule change", "Backup job failed", "Shared drive access", "Phone handset faulty",
          "Website certificate expiring", "MFA token lost", "Software install request", "Wi-Fi dropouts")
DESCRIPTIONS = ("User reports the issue started this morning.", "Affects several users on level 3.",
                "Intermittent; seen twice this week.", "Raised by monitoring alert.",
                "Customer called the service desk.", "Requested by the account manager.")
RESOLUTION_TYPES = ("Fixed", "Workaround", "Replaced Hardware", "Configuration Change", "User Training",
                    "No Fault Found", "Standard Change", "Normal Change")
RESOLUTION_NOTES = ("Restarted the service and confirmed with the user.", "Replaced the faulty unit.",
                    "Applied the vendor patch.", "Reset the account and verified login.",
                    "Updated the configuration and monitored for an hour.")
CLOSURE_CODES = ("Resolved - Confirmed", "Resolved - No Response", "Duplicate", "Cancelled")
ROOT_CAUSES = ("Hardware failure", "Software defect", "User error", "Capacity", "Third party", "Unknown")
CONTRACT_TYPES = ("Managed Services", "Time and Materials", "Block Hours")
SERVICES = ("End User Computing", "Network", "Cloud Hosting", "Collaboration", "Security")
OFFERINGS = ("Gold", "Silver", "Bronze")
SLA_NAMES = ("Standard SLA", "Premium SLA", "Business Hours SLA")
TAGS = ("vip", "after-hours", "recurring", "major-incident", "project", "warranty")
REGIONS = ("Metro", "Regional", "Interstate")
QUEUES = ("L1", "L2", "L3", "Vendor")
CHANGE_RISKS = ("Low", "Medium", "High")
APPROVALS = ("Approved", "Pending Approval", "Rejected")
AGENT_COMMENTS = ("Hi, I am looking into this now.", "Can you please confirm the device name?",
                  "I have escalated this to the network team.", "Restarted the service, please test again.",
                  "Scheduled a remote session for this afternoon.", "Vendor case has been raised.",
                  "Closing this ticket as resolved, please reply if the issue returns.")
CUSTOMER_COMMENTS = ("Thanks, that fixed it.", "Still happening after the restart.",
                     "The device name is on the sticker under the laptop.", "Any update on this one?",
                     "Please call me on my mobile.", "Works now, thanks for the quick help.")
COMMENT_TYPES = ("Reply", "Internal Note", "Status Change", "Email")
ADMIN_TITLES = ("Team meeting", "Training", "Annual leave", "Administration", "Shift handover", "Rostered off")
WORK_DESCRIPTIONS = ("Investigated and updated the ticket.", "Remote session with the user.",
                     "Onsite visit.", "Vendor call.", "Documentation and follow-up.")
TS_CATEGORY_2 = ("Remote", "Onsite", "Phone")


def _columns(spec: str) -> tuple[_Column, ...]:
    columns = []
    for line in spec.strip().splitlines():
        name, declared, target = (part.strip() for part in line.split("|"))
        columns.append(_Column(name, declared, target))
    return tuple(columns)


TICKET_COLUMNS = _columns("""
TKT-Ticket ID | INTEGER | bigint
TKT-Parent ID | REAL | bigint
TKT-Title | TEXT | text
TKT-Description | TEXT | text
TKT-Status | TEXT | text
TKT-Severity | TEXT | text
TKT-Priority | TEXT | text
TKT-Type | TEXT | text
TKT-Category | TEXT | text
TKT-Sub Category | TEXT | text
TKT-Source | TEXT | text
TKT-Team | TEXT | text
TKT-Assigned To User | TEXT | text
TKT-Assigned To Userid | INTEGER | bigint
TKT-Created By User | TEXT | text
TKT-Created By Userid | INTEGER | bigint
TKT-Account Id | REAL | bigint
TKT-Account Name | TEXT | text
TKT-Location | TEXT | text
TKT-Impact | TEXT | text
TKT-Urgency | TEXT | text
TKT-Created Time | TIMESTAMP | timestamp
TKT-Modified Time | TIMESTAMP | timestamp
TKT-SLA Closure Date | TIMESTAMP | timestamp
TKT-Actual Response Date | TEXT | timestamp
TKT-Actual Resolution Date | TEXT | timestamp
TKT-Closure Date | TEXT | timestamp
TKT-SLA Met | TEXT | boolean
TKT-Response Met | TEXT | boolean
TKT-Actual SLA Achievement | TEXT | numeric
TKT-SLA Name | TEXT | text
TKT-Job#/Ref# | TEXT | text
TKT-Resolution/Change Type | TEXT | text
TKT-Resolution Notes | TEXT | text
TKT-Related CI Ref# | REAL | bigint
TKT-Related CI Name | TEXT | text
TKT-Contact Name | TEXT | text
TKT-Contact Email | TEXT | text
TKT-Contact Phone | TEXT | text
TKT-Escalated | TEXT | boolean
TKT-Reopened Count | INTEGER | bigint
TKT-Total Time Logged | REAL | double precision
TKT-Billable | TEXT | boolean
TKT-Contract Type | TEXT | text
TKT-Service | TEXT | text
TKT-Service Offering | TEXT | text
TKT-Closure Code | TEXT | text
TKT-Root Cause | TEXT | text
TKT-Tags | TEXT | text
TKT-Region | TEXT | text
TKT-Queue | TEXT | text
TKT-Last Updated By | TEXT | text
Chg-Planned Start Date | TEXT | timestamp
Chg-Planned End Date | TEXT | timestamp
Chg-Actual Start Date | TEXT | timestamp
Chg-Actual End Date | TEXT | timestamp
Chg-Risk | TEXT | text
Chg-Approval Status | TEXT | text
Chg-CAB Required | TEXT | boolean
Chg-Implementer | TEXT | text
""")

COMMENT_COLUMNS = _columns("""
comment_id | TEXT | bigint
ticket_id | TEXT | bigint
user_id | TEXT | bigint
comment_text | TEXT | text
user_name | TEXT | text
owner_type | TEXT | text
created_time | TIMESTAMP | timestamp
visible_to_customer | TEXT | boolean
comment_type | TEXT | text
team | TEXT | text
""")

TIMESHEET_COLUMNS = _columns("""
TS-User Full Name | TEXT | text
TS-User Username | TEXT | text
TS-Title | TEXT | text
TS-Description | TEXT | text
TS-Date | TIMESTAMP | timestamp
TS-Time From | TEXT | timestamp
TS-Time To | TEXT | timestamp
TS-Type | TEXT | text
TS-Category | TEXT | text
TS-Sub Category | REAL | bigint
TS-Category 2 | TEXT | text
TS-Hours | REAL | double precision
TS-Crm ID | INTEGER | bigint
TS-Ticket Project Master Code | TEXT | text
TS-Costcentre ID | INTEGER | bigint
TS-Costcentre Desc | TEXT | text
TS-Account Selcom | TEXT | text
TS-Account Name | TEXT | text
TS-Account Bill State | TEXT | text
TS-Account Internal | TEXT | boolean
TS-Ticket Department | TEXT | text
""")


# ---------------------------------------------------------------------------------------------
# tickets


def _accounts() -> pl.DataFrame:
    names = [f"{prefix} {suffix}" for prefix in ACCOUNT_PREFIXES for suffix in ACCOUNT_SUFFIXES]
    return pl.DataFrame({
        "account_id": [3_000_000 + 37 * i for i in range(len(names))],
        "account_name": names,
    })


def _agent(field_index: int, index: pl.Expr) -> pl.Expr:
    values = pl.Series([agent[field_index] for agent in AGENTS])
    return index.replace_strict(list(range(len(AGENTS))), values)


def _build_tickets(draws: _Draws, n: int, scale: float) -> _Table:
    accounts = _accounts()
    base = pl.DataFrame({
        "ticket_id": draws.integers(1, 4, n).cum_sum() + FIRST_TICKET_ID,
        "created": draws.integers(FIRST_CREATED, LAST_CREATED, n).sort(),
        "type": draws.choice(TICKET_TYPES, n, TICKET_TYPE_WEIGHTS),
        "status": draws.choice(STATUSES, n, STATUS_WEIGHTS),
        "severity": draws.choice(SEVERITIES, n, SEVERITY_WEIGHTS),
        "agent": draws.indices(AGENT_WEIGHTS, n),
        "creator": draws.indices(AGENT_WEIGHTS, n),
        "account": draws.integers(0, accounts.height, n),
        "internal": draws.chance(0.03, n),
        "has_parent": draws.chance(0.06, n),
        "parent_offset": draws.integers(1, 400, n),
        "responded_open": draws.chance(0.5, n),
        "response_after": draws.integers(5 * 60, 8 * HOUR, n),
        "resolve_factor": draws.uniform(n) * 1.3 + 0.1,
        "close_after": draws.integers(0, 3 * DAY, n),
        "touch_after": draws.integers(0, DAY, n),
        "change_lead": draws.integers(1, 15, n) * DAY + draws.integers(0, 288, n) * 300,
        "change_hours": draws.integers(1, 9, n),
        "change_slip": draws.integers(-6, 13, n) * 300,
        "issue": draws.choice(ISSUES, n),
        "description": draws.choice(DESCRIPTIONS, n),
        "category": draws.choice(CATEGORIES, n),
        "sub_category": draws.choice(SUB_CATEGORIES, n),
        "source": draws.choice(SOURCES, n, (35, 30, 20, 10, 5)),
        "location": draws.choice(LOCATIONS, n),
        "urgency": draws.choice(("High", "Medium", "Low"), n, (2, 5, 3)),
        "sla_name": draws.choice(SLA_NAMES, n, (6, 3, 1)),
        "resolution_type": draws.choice(RESOLUTION_TYPES, n),
        "resolution_note": draws.choice(RESOLUTION_NOTES, n),
        "has_ci": draws.chance(0.4, n),
        "ci": draws.integers(0, 500, n),
        "contact_first": draws.choice(FIRST_NAMES, n),
        "contact_last": draws.choice(LAST_NAMES, n),
        "phone": draws.integers(1000_0000, 9999_9999, n),
        "escalated": draws.chance(0.08, n),
        "reopened": draws.choice((0, 1, 2), n, (90, 8, 2)),
        "time_logged": draws.integers(1, 81, n) / 4,
        "billable": draws.chance(0.55, n),
        "contract": draws.choice(CONTRACT_TYPES, n),
        "service": draws.choice(SERVICES, n),
        "offering": draws.choice(OFFERINGS, n, (2, 5, 3)),
        "closure_code": draws.choice(CLOSURE_CODES, n, (85, 8, 4, 3)),
        "root_cause": draws.choice(ROOT_CAUSES, n),
        "has_tag": draws.chance(0.25, n),
        "tag": draws.choice(TAGS, n),
        "region": draws.choice(REGIONS, n, (6, 3, 1)),
        "queue": draws.choice(QUEUES, n, (5, 3, 1, 1)),
        "updater": draws.indices(AGENT_WEIGHTS, n),
        "risk": draws.choice(CHANGE_RISKS, n, (5, 4, 1)),
        "approval": draws.choice(APPROVALS, n, (8, 1, 1)),
        "cab": draws.chance(0.4, n),
        "implementer": draws.indices(AGENT_WEIGHTS, n),
    })
    base = base.join(accounts.with_row_index("account", offset=0).with_columns(pl.col("account").cast(pl.Int64)),
                     on="account", how="left", maintain_order="left")
    timeline = base.with_columns(
        resolved=pl.col("status").is_in(["Resolved", "Closed"]),
        closed=pl.col("status") == "Closed",
        is_change=pl.col("type") == "Change",
        sla_seconds=pl.col("severity").replace_strict(SLA_HOURS, return_dtype=pl.Int64) * HOUR,
        response_target=pl.col("severity").replace_strict(RESPONSE_MINUTES, return_dtype=pl.Int64) * 60,
    ).with_columns(
        responded=(pl.col("status") != "Open") | pl.col("responded_open"),
    ).with_columns(
        response=pl.when(pl.col("responded")).then(pl.col("created") + pl.col("response_after")),
        resolution=pl.when(pl.col("resolved")).then(
            pl.col("created") + pl.col("response_after")
            + (pl.col("sla_seconds") * pl.col("resolve_factor")).cast(pl.Int64)
        ),
    ).with_columns(
        closure=pl.when(pl.col("closed")).then(pl.col("resolution") + pl.col("close_after")),
        planned_start=pl.when(pl.col("is_change")).then((pl.col("created") // 300) * 300 + pl.col("change_lead")),
    ).with_columns(
        modified=pl.when(pl.col("closed")).then(pl.col("closure"))
        .when(pl.col("resolved")).then(pl.col("resolution") + pl.col("touch_after") // 24)
        .otherwise(pl.coalesce("response", "created") + pl.col("touch_after")),
        sla_due=pl.col("created") + pl.col("sla_seconds"),
        planned_end=pl.col("planned_start") + pl.col("change_hours") * HOUR,
        actual_start=pl.when(pl.col("resolved")).then(pl.col("planned_start") + pl.col("change_slip")),
    ).with_columns(
        actual_end=pl.col("actual_start") + pl.col("change_hours") * HOUR,
        row=pl.int_range(pl.len(), dtype=pl.Int64),
    )
    frame = timeline.select(_ticket_values(timeline))
    frame = frame.with_columns(
        _planned_start_iso=pl.when(timeline["is_change"]).then(_iso(timeline["planned_start"])),
        _response_day=pl.from_epoch(timeline["response"], time_unit="s").dt.day(),
        _response=timeline["response"],
        _created=timeline["created"],
    )
    groups = _ticket_defects(draws, frame, timeline, scale)
    return _Table("tickets", TICKET_COLUMNS, frame, groups=groups)


def _ticket_values(t: pl.DataFrame) -> list[pl.Expr]:
    resolved, closed, change = pl.col("resolved"), pl.col("closed"), pl.col("is_change")
    sla_cents = (((pl.col("resolution") - pl.col("created")) * 10_000) // pl.col("sla_seconds")).cast(pl.Int64)
    contact_first = pl.col("contact_first")
    values = {
        "TKT-Ticket ID": pl.col("ticket_id"),
        "TKT-Parent ID": pl.when(pl.col("has_parent") & (pl.col("row") > 0)).then(
            pl.col("ticket_id").gather((pl.col("row") - pl.col("parent_offset")).clip(lower_bound=0))
        ).cast(pl.Float64),
        "TKT-Title": pl.concat_str(pl.col("issue"), pl.lit(" - "), pl.col("account_name")),
        "TKT-Description": pl.col("description"),
        "TKT-Status": pl.col("status"),
        "TKT-Severity": pl.col("severity"),
        "TKT-Priority": pl.col("severity").replace_strict(PRIORITIES),
        "TKT-Type": pl.col("type"),
        "TKT-Category": pl.col("category"),
        "TKT-Sub Category": pl.col("sub_category"),
        "TKT-Source": pl.col("source"),
        "TKT-Team": _agent(3, pl.col("agent")),
        "TKT-Assigned To User": _agent(0, pl.col("agent")),
        "TKT-Assigned To Userid": _agent(2, pl.col("agent")),
        "TKT-Created By User": _agent(0, pl.col("creator")),
        "TKT-Created By Userid": _agent(2, pl.col("creator")),
        "TKT-Account Id": pl.when(~pl.col("internal")).then(pl.col("account_id")).cast(pl.Float64),
        "TKT-Account Name": pl.when(~pl.col("internal")).then(pl.col("account_name")).otherwise(pl.lit("Internal")),
        "TKT-Location": pl.col("location"),
        "TKT-Impact": pl.col("severity").replace_strict(IMPACTS),
        "TKT-Urgency": pl.col("urgency"),
        "TKT-Created Time": _iso(pl.col("created")),
        "TKT-Modified Time": _iso(pl.col("modified")),
        "TKT-SLA Closure Date": _iso(pl.col("sla_due")),
        "TKT-Actual Response Date": _iso(pl.col("response")),
        "TKT-Actual Resolution Date": _iso(pl.col("resolution")),
        "TKT-Closure Date": _iso(pl.col("closure")),
        "TKT-SLA Met": pl.when(resolved).then(_yes_no(pl.col("resolution") <= pl.col("sla_due"))),
        "TKT-Response Met": pl.when(pl.col("responded")).then(
            _yes_no(pl.col("response_after") <= pl.col("response_target"))),
        "TKT-Actual SLA Achievement": pl.when(resolved).then(pl.concat_str(
            (sla_cents // 100).cast(pl.String), pl.lit("."),
            (sla_cents % 100).cast(pl.String).str.zfill(2), pl.lit("%"))),
        "TKT-SLA Name": pl.col("sla_name"),
        "TKT-Job#/Ref#": pl.concat_str(pl.lit("JOB-"), pl.col("ticket_id").cast(pl.String), pl.lit("/"),
                                        pl.col("account").cast(pl.String).str.zfill(3)),
        "TKT-Resolution/Change Type": pl.when(resolved).then(pl.col("resolution_type")),
        "TKT-Resolution Notes": pl.when(resolved).then(pl.col("resolution_note")),
        "TKT-Related CI Ref#": pl.when(pl.col("has_ci")).then(pl.col("ci") + 7_000_000).cast(pl.Float64),
        "TKT-Related CI Name": pl.when(pl.col("has_ci")).then(
            pl.concat_str(pl.lit("CI-SRV-"), pl.col("ci").cast(pl.String).str.zfill(4))),
        "TKT-Contact Name": pl.concat_str(contact_first, pl.lit(" "), pl.col("contact_last")),
        "TKT-Contact Email": pl.concat_str(contact_first.str.to_lowercase(), pl.lit("."),
                                           pl.col("contact_last").str.to_lowercase(), pl.lit("@example.com.au")),
        "TKT-Contact Phone": pl.concat_str(pl.lit("+61 2 "), (pl.col("phone") // 10_000).cast(pl.String),
                                           pl.lit(" "), (pl.col("phone") % 10_000).cast(pl.String).str.zfill(4)),
        "TKT-Escalated": _yes_no(pl.col("escalated")),
        "TKT-Reopened Count": pl.col("reopened"),
        "TKT-Total Time Logged": pl.col("time_logged"),
        "TKT-Billable": _yes_no(pl.col("billable")),
        "TKT-Contract Type": pl.col("contract"),
        "TKT-Service": pl.col("service"),
        "TKT-Service Offering": pl.col("offering"),
        "TKT-Closure Code": pl.when(closed).then(pl.col("closure_code")),
        "TKT-Root Cause": pl.when(resolved & pl.col("type").is_in(["Incident", "Problem"])).then(pl.col("root_cause")),
        "TKT-Tags": pl.when(pl.col("has_tag")).then(pl.col("tag")),
        "TKT-Region": pl.col("region"),
        "TKT-Queue": pl.col("queue"),
        "TKT-Last Updated By": _agent(0, pl.col("updater")),
        "Chg-Planned Start Date": pl.from_epoch(pl.col("planned_start"), time_unit="s").dt.strftime(MDY_FORMAT),
        "Chg-Planned End Date": _iso(pl.col("planned_end")),
        "Chg-Actual Start Date": pl.when(change).then(_iso(pl.col("actual_start"))),
        "Chg-Actual End Date": pl.when(change).then(_iso(pl.col("actual_end"))),
        "Chg-Risk": pl.when(change).then(pl.col("risk")),
        "Chg-Approval Status": pl.when(change).then(pl.col("approval")),
        "Chg-CAB Required": pl.when(change).then(_yes_no(pl.col("cab"))),
        "Chg-Implementer": pl.when(change).then(_agent(0, pl.col("implementer"))),
    }
    assert list(values) == [column.name for column in TICKET_COLUMNS]
    return [expr.alias(name) for name, expr in values.items()]


def _ticket_defects(draws: _Draws, frame: pl.DataFrame, timeline: pl.DataFrame, scale: float) -> tuple[_CellGroup, ...]:
    everywhere = pl.Series([True] * frame.height)
    groups = [
        _empty_strings("TKT-Closure Date", (~timeline["closed"]).arg_true().to_list()),
        _empty_strings("TKT-Actual Resolution Date", (~timeline["resolved"]).arg_true().to_list()),
        _dmy_response_dates(draws, frame),
        _invalid_utf8(draws, frame, "TKT-Title", everywhere),
    ]
    markers_each = _planted_count(3, scale)
    groups += _null_markers(draws, "TKT-SLA Closure Date", everywhere, markers_each, empties=_planted_count(12, scale))
    groups += _null_markers(draws, "TKT-Account Id", frame["TKT-Account Id"].is_not_null(), markers_each)
    groups.append(_empty_strings("TKT-Parent ID",
                                 draws.rows(frame["TKT-Parent ID"].is_null(), _planted_count(10, scale))))
    groups.append(_listed("Chg-Planned Start Date", "mdy_datetime", frame,
                          frame["Chg-Planned Start Date"].is_not_null(), expected=frame["_planned_start_iso"]))
    groups += _examples(frame, groups, [
        ("TKT-SLA Met", "yes_no"), ("TKT-Response Met", "yes_no"), ("TKT-Escalated", "yes_no"),
        ("TKT-Billable", "yes_no"), ("Chg-CAB Required", "yes_no"), ("TKT-Actual SLA Achievement", "percentage"),
        ("TKT-Parent ID", "integral_float"), ("TKT-Account Id", "integral_float"),
        ("TKT-Related CI Ref#", "integral_float"),
    ])
    return tuple(groups)


def _dmy_response_dates(draws: _Draws, frame: pl.DataFrame) -> _CellGroup:
    """Nine `DD/MM/YYYY H:MM` response dates: most with a day above 12 (proof of day-first)."""
    responded = frame["_response"].is_not_null()
    late_day = frame["_response_day"] > 12
    proving = draws.rows(responded & late_day, DMY_PROVING_DAY_FIRST)
    ambiguous = draws.rows(responded & ~late_day, DMY_VALUES - len(proving))
    if len(proving) + len(ambiguous) < DMY_VALUES:
        proving = draws.rows(responded & late_day, DMY_VALUES - len(ambiguous))
    rows = sorted(proving + ambiguous)
    moments = [datetime.fromtimestamp(epoch, UTC) for epoch in frame["_response"].gather(rows).to_list()]
    raw = [f"{m.day:02d}/{m.month:02d}/{m.year} {m.hour}:{m.minute:02d}" for m in moments]
    expected = [m.strftime("%Y-%m-%d %H:%M:00") for m in moments]
    return _CellGroup("TKT-Actual Response Date", "dmy_datetime", rows, raw, expected)


# ---------------------------------------------------------------------------------------------
# comments


def _build_comments(draws: _Draws, n: int, scale: float, tickets: _Table) -> _Table:
    duplicates = min(_planted_count(25, scale), max(0, n - 1) // 2)
    frame, pairs = _with_duplicates(draws, _comment_rows(draws, n - duplicates, tickets.frame), duplicates)
    clean = ~_duplicate_mask(frame.height, pairs)
    groups = _comment_text_defects(draws, frame, clean, nul=_planted_count(20, scale),
                                   crlf=_planted_count(200, scale, minimum=2))
    groups += _examples(frame, groups, [("comment_id", "number_as_text"), ("ticket_id", "number_as_text"),
                                        ("user_id", "number_as_text"), ("visible_to_customer", "yes_no")])
    return _Table("comments", COMMENT_COLUMNS, frame, tuple(groups), pairs, tuple(frame["_orphan"].arg_true().to_list()))


def _comment_rows(draws: _Draws, base_n: int, tickets: pl.DataFrame) -> pl.DataFrame:
    """Comments before duplication; `_orphan` marks those whose ticket does not exist."""
    ticket_rows = _skewed_ticket_rows(draws, tickets.height, base_n)
    orphan = pl.Series([False] * base_n)
    orphan_rows = draws.rows(~orphan, round(0.02 * base_n))
    if orphan_rows:
        orphan = orphan.scatter(orphan_rows, True)
    base = pl.DataFrame({
        "orphan": orphan,
        "ticket_id": tickets["TKT-Ticket ID"].gather(ticket_rows),
        "orphan_ticket_id": draws.integers(*ORPHAN_TICKET_IDS, base_n),
        "ticket_created": tickets["_created"].gather(ticket_rows),
        "orphan_created": draws.integers(FIRST_CREATED, LAST_CREATED, base_n),
        "after": (draws.uniform(base_n).pow(2) * 20 * DAY).cast(pl.Int64) + 60,
        "ticket_team": tickets["TKT-Team"].gather(ticket_rows),
        "orphan_team": draws.choice(TEAMS, base_n, TEAM_WEIGHTS),
        "agent": draws.indices(AGENT_WEIGHTS, base_n),
        "customer": draws.chance(0.3, base_n),
        "customer_id": draws.integers(8_000_001, 8_002_000, base_n),
        "customer_first": draws.choice(FIRST_NAMES, base_n),
        "customer_last": draws.choice(LAST_NAMES, base_n),
        "agent_text": draws.choice(AGENT_COMMENTS, base_n),
        "customer_text": draws.choice(CUSTOMER_COMMENTS, base_n),
        "visible": draws.chance(0.6, base_n),
        "comment_type": draws.choice(COMMENT_TYPES, base_n, (50, 30, 15, 5)),
    })
    orphan_col, customer = pl.col("orphan"), pl.col("customer")
    created = pl.when(orphan_col).then(pl.col("orphan_created")).otherwise(pl.col("ticket_created")) + pl.col("after")
    return base.select(
        comment_id=(pl.int_range(pl.len(), dtype=pl.Int64) + FIRST_COMMENT_ID).cast(pl.String),
        ticket_id=pl.when(orphan_col).then(pl.col("orphan_ticket_id")).otherwise(pl.col("ticket_id")).cast(pl.String),
        user_id=pl.when(customer).then(pl.col("customer_id")).otherwise(_agent(2, pl.col("agent"))).cast(pl.String),
        comment_text=pl.when(customer).then(pl.col("customer_text")).otherwise(pl.col("agent_text")),
        user_name=pl.when(customer).then(pl.concat_str(pl.col("customer_first"), pl.lit(" "), pl.col("customer_last")))
        .otherwise(_agent(0, pl.col("agent"))),
        owner_type=pl.when(customer).then(pl.lit("Customer")).otherwise(pl.lit("Agent")),
        created_time=_iso(created),
        visible_to_customer=_yes_no(customer | pl.col("visible")),
        comment_type=pl.when(customer).then(pl.lit("Reply")).otherwise(pl.col("comment_type")),
        team=pl.when(orphan_col).then(pl.col("orphan_team")).otherwise(pl.col("ticket_team")),
        _orphan=orphan_col,
    )


def _skewed_ticket_rows(draws: _Draws, tickets: int, n: int) -> pl.Series:
    """Ticket positions for n comments; a few tickets get many comments, most get a handful."""
    weights = (draws.uniform(tickets) * 0.98 + 0.02).pow(-0.9).floor().cast(pl.Int64).clip(1, 60)
    population = pl.int_range(tickets, eager=True, dtype=pl.Int64).repeat_by(weights).explode()
    return draws.sample(population, n)


# ---------------------------------------------------------------------------------------------
# timesheets


def _build_timesheets(draws: _Draws, n: int, scale: float, tickets: _Table) -> _Table:
    duplicates = min(_planted_count(40, scale), max(0, n - 1) // 2)
    frame, pairs = _with_duplicates(draws, _timesheet_rows(draws, n - duplicates, tickets.frame), duplicates)
    clean = ~_duplicate_mask(frame.height, pairs)
    groups = [_empty_strings("TS-Hours", draws.rows(clean, _planted_count(30, scale)))]
    groups += _examples(frame, groups, [("TS-Sub Category", "integral_float"), ("TS-Account Internal", "yes_no")])
    return _Table("timesheets", TIMESHEET_COLUMNS, frame, tuple(groups), pairs)


def _timesheet_rows(draws: _Draws, base_n: int, t: pl.DataFrame) -> pl.DataFrame:
    ticket_rows = draws.integers(0, t.height, base_n)
    admin = draws.chance(0.2, base_n)
    agent = draws.indices(AGENT_WEIGHTS, base_n)
    team = pl.Series([a[3] for a in AGENTS]).gather(agent)
    base = pl.DataFrame({
        "admin": admin,
        "agent": agent,
        "team": team,
        "ticket_id": t["TKT-Ticket ID"].gather(ticket_rows),
        "ticket_day": t["_created"].gather(ticket_rows) // DAY * DAY,
        "admin_day": draws.integers(FIRST_CREATED // DAY, LAST_CREATED // DAY, base_n) * DAY,
        "days_later": draws.integers(0, 11, base_n) * DAY,
        "start": draws.integers(28, 69, base_n) * 900,
        "long_day": draws.chance(0.02, base_n),
        "long_quarters": draws.integers(33, 49, base_n),
        "short_quarters": draws.integers(1, 33, base_n),
        "ticket_title": t["TKT-Title"].gather(ticket_rows),
        "ticket_type": t["TKT-Type"].gather(ticket_rows),
        "ticket_team": t["TKT-Team"].gather(ticket_rows),
        "account_id": t["TKT-Account Id"].gather(ticket_rows),
        "account_name": t["TKT-Account Name"].gather(ticket_rows),
        "admin_title": draws.choice(ADMIN_TITLES, base_n),
        "description": draws.choice(WORK_DESCRIPTIONS, base_n),
        "has_sub_category": draws.chance(0.7, base_n),
        "sub_category": draws.integers(101, 141, base_n),
        "has_category_2": draws.chance(0.8, base_n),
        "category_2": draws.choice(TS_CATEGORY_2, base_n, (6, 3, 1)),
    }).with_columns(
        crm=pl.when(pl.col("admin")).then(0).otherwise(pl.col("ticket_id")),
        day=pl.when(pl.col("admin")).then(pl.col("admin_day")).otherwise(pl.col("ticket_day") + pl.col("days_later")),
        quarters=pl.when(pl.col("long_day")).then(pl.col("long_quarters")).otherwise(pl.col("short_quarters")),
    )
    admin_col, account = pl.col("admin"), pl.col("account_id").cast(pl.Int64)
    frame = base.select(
        _agent(0, pl.col("agent")).alias("TS-User Full Name"),
        _agent(1, pl.col("agent")).alias("TS-User Username"),
        pl.when(admin_col).then(pl.col("admin_title")).otherwise(pl.col("ticket_title")).alias("TS-Title"),
        pl.col("description").alias("TS-Description"),
        _iso(pl.col("day")).alias("TS-Date"),
        _iso(pl.col("day") + pl.col("start")).alias("TS-Time From"),
        _iso(pl.col("day") + pl.col("start") + pl.col("quarters") * 900).alias("TS-Time To"),
        pl.when(admin_col).then(pl.lit("Admin")).otherwise(pl.lit("Ticket")).alias("TS-Type"),
        pl.when(admin_col).then(pl.lit("Internal"))
        .otherwise(pl.when(pl.col("ticket_type") == "Change").then(pl.lit("Change")).otherwise(pl.lit("Support")))
        .alias("TS-Category"),
        pl.when(pl.col("has_sub_category")).then(pl.col("sub_category")).cast(pl.Float64).alias("TS-Sub Category"),
        pl.when(pl.col("has_category_2")).then(pl.col("category_2")).alias("TS-Category 2"),
        (pl.col("quarters") / 4).alias("TS-Hours"),
        pl.col("crm").alias("TS-Crm ID"),
        pl.when(admin_col | account.is_null()).then(pl.lit("INTERNAL"))
        .otherwise(pl.concat_str(pl.lit("PMC-"), (account % 100_000).cast(pl.String).str.zfill(5)))
        .alias("TS-Ticket Project Master Code"),
        pl.col("team").replace_strict(COSTCENTRES, return_dtype=pl.Int64).alias("TS-Costcentre ID"),
        pl.concat_str(pl.col("team"), pl.lit(" Cost Centre")).alias("TS-Costcentre Desc"),
        pl.when(admin_col | account.is_null()).then(pl.lit("SEL000000"))
        .otherwise(pl.concat_str(pl.lit("SEL"), (account % 1_000_000).cast(pl.String).str.zfill(6)))
        .alias("TS-Account Selcom"),
        pl.when(admin_col).then(pl.lit("Internal")).otherwise(pl.col("account_name")).alias("TS-Account Name"),
        pl.when(admin_col | account.is_null()).then(pl.lit("NSW"))
        .otherwise(_bill_state(account))
        .alias("TS-Account Bill State"),
        _yes_no(admin_col | account.is_null()).alias("TS-Account Internal"),
        pl.when(admin_col).then(pl.lit("Administration")).otherwise(pl.col("ticket_team")).alias("TS-Ticket Department"),
    )
    assert frame.columns == [column.name for column in TIMESHEET_COLUMNS]
    return frame


def _bill_state(account: pl.Expr) -> pl.Expr:
    states = pl.Series(BILL_STATES)
    return ((account - 3_000_000) // 37 % len(BILL_STATES)).replace_strict(list(range(len(states))), states)


# ---------------------------------------------------------------------------------------------
# Defects


def _empty_strings(column: str, rows: list[int]) -> _CellGroup:
    return _CellGroup(column, "empty_string", rows, [""] * len(rows), [None] * len(rows))


def _null_markers(draws: _Draws, column: str, eligible: pl.Series, each: int, empties: int = 0) -> list[_CellGroup]:
    """`N/A`, `NULL`, `-`, `nan` and whitespace (and optionally '') on distinct rows of one column."""
    values = [marker for marker in NULL_MARKERS + WHITESPACE_VALUES for _ in range(each)] + [""] * empties
    rows = draws.rows(eligible, len(values))
    order = draws.integers(0, 1 << 30, len(rows)).arg_sort().to_list()
    assigned = sorted(zip((rows[i] for i in order), values, strict=False))
    groups = []
    for defect, members in (("null_marker", NULL_MARKERS), ("whitespace", WHITESPACE_VALUES), ("empty_string", ("",))):
        cells = [(row, value) for row, value in assigned if value in members]
        if cells:
            groups.append(_CellGroup(column, defect, [r for r, _ in cells], [v for _, v in cells], [None] * len(cells)))
    return groups


def _invalid_utf8(draws: _Draws, frame: pl.DataFrame, column: str, eligible: pl.Series) -> _CellGroup:
    """One text value holding a cp1252 en dash (byte 0x96), which is not valid UTF-8."""
    rows = draws.rows(eligible & frame[column].is_not_null(), 1)
    expected = [_with_en_dash(text) for text in frame[column].gather(rows).to_list()]
    return _CellGroup(column, "invalid_utf8", rows, [text.encode("cp1252") for text in expected], expected)


def _with_en_dash(text: str) -> str:
    return text.replace(" - ", " \u2013 ", 1) if " - " in text else f"{text} \u2013 see above"


def _comment_text_defects(draws: _Draws, frame: pl.DataFrame, eligible: pl.Series, *, nul: int,
                          crlf: int) -> list[_CellGroup]:
    """NUL bytes, CRLF line ends and one invalid UTF-8 value in `comment_text`, on distinct rows."""
    rows = draws.rows(eligible, nul + crlf + 1)
    shuffled = [rows[i] for i in draws.integers(0, 1 << 30, len(rows)).arg_sort().to_list()]
    invalid_rows, nul_rows, crlf_rows = shuffled[:1], sorted(shuffled[1:1 + nul]), sorted(shuffled[1 + nul:])
    texts = frame["comment_text"]
    invalid = [_with_en_dash(text) for text in texts.gather(invalid_rows).to_list()]
    with_nul = texts.gather(nul_rows).to_list()
    with_crlf = texts.gather(crlf_rows).to_list()
    return [
        _CellGroup("comment_text", "nul_byte", nul_rows,
                   [text[: len(text) // 2] + "\x00" + text[len(text) // 2:] for text in with_nul], with_nul),
        _CellGroup("comment_text", "crlf", crlf_rows,
                   [text + "\r\n\r\nRegards,\r\nService Desk" for text in with_crlf],
                   [text + "\n\nRegards,\nService Desk" for text in with_crlf]),
        _CellGroup("comment_text", "invalid_utf8", invalid_rows, [text.encode("cp1252") for text in invalid], invalid),
    ]


def _listed(column: str, defect: str, frame: pl.DataFrame, mask: pl.Series, expected: pl.Series) -> _CellGroup:
    """A defect already present in the frame (a whole-column format): listed in full, not written."""
    rows = mask.arg_true().to_list()
    return _CellGroup(column, defect, rows, frame[column].gather(rows).to_list(),
                      expected.gather(rows).to_list(), write=False)


def _examples(frame: pl.DataFrame, planted: list[_CellGroup], specs: list[tuple[str, str]]) -> list[_CellGroup]:
    """The first rows of whole-column representation defects, with their full count."""
    groups = []
    for column, defect in specs:
        taken = [row for group in planted if group.column == column for row in group.rows]
        present = frame[column].is_not_null() & ~pl.Series(range(frame.height)).is_in(taken)
        rows = present.arg_true().head(EXAMPLES_PER_COLUMN).to_list()
        raw = frame[column].gather(rows).to_list()
        groups.append(_CellGroup(column, defect, rows, raw, [_canonical(defect, value) for value in raw],
                                 write=False, total=int(present.sum())))
    return groups


def _canonical(defect: str, raw: Any) -> Any:
    if defect == "yes_no":
        return raw == "Yes"
    if defect == "percentage":
        return float(raw.rstrip("%"))
    return int(float(raw))


# ---------------------------------------------------------------------------------------------
# Duplicate rows


def _with_duplicates(draws: _Draws, frame: pl.DataFrame, copies: int) -> tuple[pl.DataFrame, tuple[tuple[int, ...], ...]]:
    """Insert `copies` identical copies of distinct rows, each somewhere after its original.

    Returns the new frame and the (original, copy) row positions of every duplicated row.
    """
    n = frame.height
    sources = draws.rows(pl.Series([True] * n), copies)
    if not sources:
        return frame, ()
    source_series = pl.Series(sources, dtype=pl.Int64)
    later = source_series + (draws.uniform(len(sources)) * (n - source_series)).floor().cast(pl.Int64)
    everything = pl.int_range(n, eager=True, dtype=pl.Int64)
    take = pl.DataFrame({
        "order": pl.concat([everything * 2, later * 2 + 1]),
        "source": pl.concat([everything, source_series]),
    }).sort(["order", "source"], maintain_order=True)["source"]
    positions = (take.to_frame().with_row_index("position").filter(pl.col("source").is_in(sources))
                 .group_by("source", maintain_order=True).agg(pl.col("position").sort()).sort("source"))
    pairs = tuple(tuple(int(p) for p in group) for group in positions["position"].to_list())
    return frame.gather(take), pairs


def _duplicate_mask(n: int, pairs: tuple[tuple[int, ...], ...]) -> pl.Series:
    mask = pl.Series([False] * n)
    members = [row for pair in pairs for row in pair]
    return mask.scatter(members, True) if members else mask


# ---------------------------------------------------------------------------------------------
# Writing


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Build the file as a temp file beside `path`, then rename it into place."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(temp)
        _remove_sqlite_sidecars(path)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _remove_sqlite_sidecars(path: Path) -> None:
    """A journal or WAL left by the file being replaced would be applied to the new one."""
    for suffix in ("-journal", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def _write_database(path: Path, row_counts: dict[str, int], *, scale: float, seed: int) -> list[_TruthPart]:
    """Build and insert the tables one by one in one transaction; only the truth of each is kept."""
    draws = _Draws(seed)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
        tickets = _build_tickets(draws, row_counts["tickets"], scale)
        parts = [_store(conn, tickets)]
        parts.append(_store(conn, _build_comments(draws, row_counts["comments"], scale, tickets)))
        parts.append(_store(conn, _build_timesheets(draws, row_counts["timesheets"], scale, tickets)))
        conn.execute("COMMIT")
    finally:
        conn.close()
    return parts


def _store(conn: sqlite3.Connection, table: _Table) -> _TruthPart:
    name = quote_ident(table.name)
    definitions = ",\n  ".join(f"{quote_ident(c.name)} {c.declared}" for c in table.columns)
    conn.execute(f"CREATE TABLE {name} (\n{definitions}\n)")
    placeholders = ", ".join("?" for _ in table.columns)
    values = table.frame.select([c.name for c in table.columns])
    conn.executemany(f"INSERT INTO {name} VALUES ({placeholders})", values.iter_rows())
    for group in table.groups:
        if group.write and group.rows:
            target = "CAST(? AS TEXT)" if isinstance(group.raw[0], bytes) else "?"
            statement = f"UPDATE {name} SET {quote_ident(group.column)} = {target} WHERE rowid = ?"
            conn.executemany(statement, ((raw, row + 1) for raw, row in zip(group.raw, group.rows, strict=True)))
    return _truth_part(table)


def _truth_part(table: _Table) -> _TruthPart:
    key_column = KEY_COLUMNS[table.name]
    keys = table.frame[key_column].cast(pl.Int64) if key_column else None
    cells: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    for group in table.groups:
        counts[group.defect] += group.total if group.total is not None else len(group.rows)
        group_keys = keys.gather(group.rows).to_list() if keys is not None else [None] * len(group.rows)
        for row, key, raw, expected in zip(group.rows, group_keys, group.raw, group.expected, strict=True):
            cells.append({
                "table": table.name, "rowid": row + 1, "key": key, "column": group.column, "defect": group.defect,
                "raw": {"hex": raw.hex()} if isinstance(raw, bytes) else raw, "expected": expected,
            })
    duplicates = [{"table": table.name, "rowids": [row + 1 for row in pair]} for pair in table.duplicates]
    orphan_values = table.frame["ticket_id"].gather(list(table.orphan_rows)).to_list() if table.orphan_rows else []
    orphans = [{"table": table.name, "rowid": row + 1, "column": "ticket_id", "value": value}
               for row, value in zip(table.orphan_rows, orphan_values, strict=True)]
    counts["duplicate_row"] += sum(len(pair) - 1 for pair in table.duplicates)
    counts["orphan"] += len(orphans)
    column_types = {c.name: c.target for c in table.columns}
    return _TruthPart(table.name, table.frame.height, column_types, cells, counts, duplicates, orphans)


def _truth_document(parts: list[_TruthPart], *, seed: int, scale: float) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    for part in parts:
        counts.update(part.counts)
    return {
        "seed": seed,
        "scale": float(scale),
        "generator_version": GENERATOR_VERSION,
        "row_counts": {part.table: part.rows for part in parts},
        "key_columns": dict(KEY_COLUMNS),
        "column_types": {part.table: part.column_types for part in parts},
        "counts": dict(sorted(counts.items())),
        "cells": [cell for part in parts for cell in part.cells],
        "duplicate_rows": [entry for part in parts for entry in part.duplicates],
        "orphans": [entry for part in parts for entry in part.orphans],
    }
