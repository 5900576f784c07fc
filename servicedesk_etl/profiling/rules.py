"""Gate 1 rules: rule packs are data (TOML), evaluated in the engine through a table source.

A pack names its categories and their weights (which must sum to 100), a column-name mapping
(logical names such as `comment.id` -> any of `comment_id`, `CT-COMMENT-ID`, `TKTCT-CommentID`) and
its rules. Each rule is a check kind from `CHECKS` applied to columns chosen by logical name or by
a selector (`select = "date_columns"`, ...). A rule whose columns cannot be found is reported
`not_evaluated` with the missing names; it is never dropped. Summary rules are reported but not
counted inside their own category.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import tomllib
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from servicedesk_etl.errors import InputError
from servicedesk_etl.profiling import sources as m
from servicedesk_etl.profiling.plan import ColumnPlan, Plan, TablePlan
from servicedesk_etl.profiling.sources import DEFAULT_NULL_MARKERS, Link, Measure, OrphanCount, TableSource

log = logging.getLogger(__name__)

PASS = "pass"
FAIL = "fail"
NOT_EVALUATED = "not_evaluated"
NOT_APPLICABLE = "not_applicable"

DATE_TYPES = ("date", "timestamp", "timestamptz")
NUMBER_TYPES = ("bigint", "numeric", "double precision")
PG_IDENTIFIER_BYTES = 63
_EPSILON = 1e-9


class RulePackError(InputError):
    """A rule pack or mapping file is unusable (bad TOML, weights not summing to 100, unknown check)."""


# --- names: mapping, keys, links ---------------------------------------------------------------


def normalise_name(name: str) -> str:
    """Lower case, letters and digits only: `TKT-Ticket ID` -> `tktticketid`."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


_CAMEL_ID = re.compile(r"[a-z0-9]I[Dd]$")


def is_id_like(name: str) -> bool:
    """`id`, `*_id`, `* ID`, `*-ID`, `*Id`, `*ID`: a name that says the column holds identifiers."""
    return bool(re.search(r"(?:^|[\s_\-#/.])id$", name, re.IGNORECASE) or _CAMEL_ID.search(name))


def _singulars(table: str) -> set[str]:
    name = normalise_name(table)
    forms = {name}
    if name.endswith("ies"):
        forms.add(name[:-3] + "y")
    if name.endswith("es"):
        forms.add(name[:-2])
    if name.endswith("s"):
        forms.add(name[:-1])
    return {form for form in forms if form}


def key_column(table: TablePlan) -> ColumnPlan | None:
    """The table's single key-like column: its planned key, else `id` / `<table>id` by name."""
    if len(table.key_columns) == 1:
        return table.column(table.key_columns[0])
    stems = _singulars(table.name)
    exact = [c for c in table.columns if normalise_name(c.name) == "id"]
    named = [c for c in table.columns if normalise_name(c.name) in {stem + "id" for stem in stems}]
    suffixed = [
        c for c in table.columns if is_id_like(c.name) and any(normalise_name(c.name).endswith(s + "id") for s in stems)
    ]
    for candidates in (exact, named, suffixed):
        if candidates:
            return candidates[0]
    return None


@dataclass(frozen=True)
class NameMapping:
    """Logical table and column names -> candidate physical (original) names, in preference order."""

    tables: dict[str, tuple[str, ...]] = field(default_factory=dict)
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def merged_over(self, base: NameMapping) -> NameMapping:
        """This mapping's candidates first, then `base`'s."""
        return NameMapping(_merge(self.tables, base.tables), _merge(self.columns, base.columns))


def _merge(first: Mapping[str, tuple[str, ...]], then: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    keys = list(dict.fromkeys([*first, *then]))
    return {key: tuple(dict.fromkeys([*first.get(key, ()), *then.get(key, ())])) for key in keys}


def _mapping_from(data: Mapping[str, Any], origin: str) -> NameMapping:
    def names(section: str) -> dict[str, tuple[str, ...]]:
        raw = data.get(section, {})
        if not isinstance(raw, dict):
            raise RulePackError(f"{origin}: [{section}] must be a table of name lists")
        result = {}
        for logical, candidates in raw.items():
            if isinstance(candidates, str):
                candidates = [candidates]
            if not isinstance(candidates, list) or not all(isinstance(c, str) for c in candidates):
                raise RulePackError(f"{origin}: mapping {logical!r} must be a list of names")
            result[logical] = tuple(candidates)
        return result

    mapping = NameMapping(names("tables"), names("columns"))
    for logical in mapping.columns:
        if "." not in logical:
            raise RulePackError(f"{origin}: column mapping {logical!r} must be written `table.column`")
    return mapping


def load_mapping(path: Path) -> NameMapping:
    """A user mapping file: `[tables]` and `[columns]` (or the same under `[mapping]`)."""
    data = _read_toml(path)
    return _mapping_from(data.get("mapping", data), str(path))


@dataclass(frozen=True)
class ColumnRef:
    """A planned column found in a source: its plan and the names to use in that engine."""

    table: TablePlan
    column: ColumnPlan
    physical_table: str
    physical_column: str

    @property
    def label(self) -> str:
        return f"{self.table.name}.{self.column.name}"


class Catalog:
    """The plan's tables and columns that exist in a source, under the names that source uses."""

    def __init__(self, source: TableSource, plan: Plan, mapping: NameMapping | None = None) -> None:
        self.source = source
        self.plan = plan
        self.mapping = mapping or NameMapping()
        present = set(source.tables())
        self.tables: dict[str, TablePlan] = {}
        self.physical: dict[str, str] = {}
        self._columns: dict[str, set[str]] = {}
        for table in plan.tables:
            physical = table.pg_name if source.uses_pg_names else table.name
            if physical in present:
                self.tables[table.name] = table
                self.physical[table.name] = physical
                self._columns[table.name] = set(source.columns(physical))
        self.missing_tables = tuple(t.name for t in plan.tables if t.name not in self.tables)

    def ref(self, table: TablePlan, column: ColumnPlan) -> ColumnRef | None:
        physical = column.pg_name if self.source.uses_pg_names else column.name
        if table.name not in self.tables or physical not in self._columns[table.name]:
            return None
        return ColumnRef(table, column, self.physical[table.name], physical)

    def refs(self, table: TablePlan) -> list[ColumnRef]:
        return [ref for column in table.columns if (ref := self.ref(table, column)) is not None]

    def all_refs(self) -> list[ColumnRef]:
        return [ref for table in self.tables.values() for ref in self.refs(table)]

    def missing_columns(self, table: TablePlan) -> tuple[str, ...]:
        return tuple(f"{table.name}.{c.name}" for c in table.columns if self.ref(table, c) is None)

    def resolve_table(self, logical: str) -> TablePlan | None:
        for candidate in self.mapping.tables.get(logical, (logical,)):
            found = _find_by_name(candidate, list(self.tables.values()), lambda t: t.name)
            if found is not None:
                return found
        return None

    def resolve_column(self, logical: str) -> ColumnRef | None:
        table_name, _, column_name = logical.partition(".")
        table = self.resolve_table(table_name)
        if table is None:
            return None
        for candidate in self.mapping.columns.get(logical, (column_name,)):
            found = _find_by_name(candidate, list(table.columns), lambda c: c.name)
            if found is not None:
                return self.ref(table, found)
        return None


def _find_by_name(candidate: str, items: Sequence[Any], name_of: Callable[[Any], str]) -> Any:
    for item in items:
        if name_of(item) == candidate:
            return item
    wanted = normalise_name(candidate)
    for item in items:
        if normalise_name(name_of(item)) == wanted:
            return item
    return None


def detect_links(catalog: Catalog) -> list[tuple[ColumnRef, ColumnRef]]:
    """Key-like columns that name another table's key: `Invoice.CustomerId` -> `Customer.CustomerId`,
    `comments.ticket_id` -> `tickets.TKT-Ticket ID`; plus mapped ones (`x.<t>_id` -> `<t>.id`)."""
    keys = {name: key_column(table) for name, table in catalog.tables.items()}
    links: dict[tuple[str, str], tuple[ColumnRef, ColumnRef]] = {}
    for child_table in catalog.tables.values():
        own_key = keys[child_table.name]
        for child in catalog.refs(child_table):
            if not is_id_like(child.column.name) or (own_key is not None and child.column.name == own_key.name):
                continue
            target = _referenced_table(normalise_name(child.column.name), child_table.name, catalog, keys)
            if target is not None:
                parent = catalog.ref(catalog.tables[target], keys[target])  # type: ignore[arg-type]
                if parent is not None:
                    links[(child.label, parent.label)] = (child, parent)
    for logical in catalog.mapping.columns:
        table, _, column = logical.partition(".")
        if column.endswith("_id") and f"{column[:-3]}.id" in catalog.mapping.columns and column[:-3] != table:
            mapped_child = catalog.resolve_column(logical)
            mapped_parent = catalog.resolve_column(f"{column[:-3]}.id")
            if mapped_child is not None and mapped_parent is not None:
                links[(mapped_child.label, mapped_parent.label)] = (mapped_child, mapped_parent)
    return list(links.values())


def _referenced_table(
    normalised: str, own_table: str, catalog: Catalog, keys: Mapping[str, ColumnPlan | None]
) -> str | None:
    best, best_length = None, 0
    for name in catalog.tables:
        if name == own_table or keys[name] is None:
            continue
        for stem in _singulars(name):
            if normalised.endswith(stem + "id") and len(stem) > best_length:
                best, best_length = name, len(stem)
    return best


_ROLE_STEMS = {"created": ("create",), "modified": ("modif", "updat"), "closed": ("clos",)}


def date_order_pairs(table: TablePlan) -> list[tuple[ColumnPlan, ColumnPlan]]:
    """(earlier, later) date columns by role: created <= modified <= closed, where those exist."""
    roles = {}
    for role, stems in _ROLE_STEMS.items():
        matches = [
            c for c in table.columns if c.target_type in DATE_TYPES and any(s in normalise_name(c.name) for s in stems)
        ]
        if matches:
            roles[role] = min(matches, key=lambda c: (len(normalise_name(c.name)), c.name))
    order = [roles[r] for r in ("created", "modified", "closed") if r in roles]
    return list(zip(order, order[1:], strict=False))


# --- packs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleSpec:
    id: str
    name: str
    category: str
    check: str
    params: dict[str, Any]
    threshold: dict[str, float]
    summary: bool = False


@dataclass(frozen=True)
class RulePack:
    name: str
    description: str
    categories: dict[str, float]
    rules: tuple[RuleSpec, ...]
    mapping: NameMapping = field(default_factory=NameMapping)
    applies_when_tables: tuple[str, ...] = ()
    min_tables: int = 0
    path: str = ""


def shipped_pack_paths() -> tuple[Path, ...]:
    """The packs shipped with the package (`servicedesk_etl/rules/*.toml`), generic first."""
    folder = resources.files("servicedesk_etl") / "rules"
    paths = sorted((Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".toml")), key=_pack_order)
    return tuple(paths)


def _pack_order(path: Path) -> tuple[int, str]:
    return (0 if path.stem == "generic" else 1, path.name)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise RulePackError(f"{path}: no such rules file") from error
    except tomllib.TOMLDecodeError as error:
        raise RulePackError(f"{path}: not valid TOML ({error})") from error


def load_pack(path: Path) -> RulePack:
    """Read and validate one pack: weights sum to 100, every rule's category and check exist."""
    data = _read_toml(path)
    origin = str(path)
    meta = data.get("pack", {})
    name = meta.get("name") or Path(path).stem
    categories = _validated_weights(data.get("categories", {}), f"rules pack {name!r} ({origin})")
    seen: set[str] = set()
    rules = []
    for raw in data.get("rules", []):
        rule = _rule_from(raw, name, categories)
        if rule.id in seen:
            raise RulePackError(f"rules pack {name!r}: rule id {rule.id!r} appears twice")
        seen.add(rule.id)
        rules.append(rule)
    return RulePack(
        name=name,
        description=meta.get("description", ""),
        categories=categories,
        rules=tuple(rules),
        mapping=_mapping_from(data.get("mapping", {}), origin),
        applies_when_tables=tuple(meta.get("applies_when_tables", ())),
        min_tables=int(meta.get("min_tables", len(meta.get("applies_when_tables", ())))),
        path=origin,
    )


def validate_weights(weights: Mapping[str, float], what: str) -> dict[str, float]:
    """`weights` as floats, or RulePackError when they are not numbers >= 0 summing to 100."""
    return _validated_weights(weights, what)


def _validated_weights(weights: Mapping[str, Any], what: str) -> dict[str, float]:
    if not weights:
        raise RulePackError(f"{what}: no category weights given")
    bad = [k for k, v in weights.items() if isinstance(v, bool) or not isinstance(v, int | float) or v < 0]
    if bad:
        raise RulePackError(f"{what}: weights must be numbers >= 0 ({', '.join(bad)})")
    total = sum(float(v) for v in weights.values())
    if abs(total - 100.0) > 1e-6:
        listed = ", ".join(f"{k} {v:g}" for k, v in weights.items())
        raise RulePackError(f"{what}: weights sum to {total:g}, not 100 ({listed})")
    return {k: float(v) for k, v in weights.items()}


def _rule_from(raw: Mapping[str, Any], pack: str, categories: Mapping[str, float]) -> RuleSpec:
    rule_id = raw.get("id")
    if not rule_id:
        raise RulePackError(f"rules pack {pack!r}: a rule has no id")
    where = f"rules pack {pack!r}, rule {rule_id!r}"
    category = raw.get("category")
    if category not in categories:
        raise RulePackError(f"{where}: category {category!r} is not one of {', '.join(categories)}")
    check = raw.get("check")
    if check not in CHECKS:
        raise RulePackError(f"{where}: unknown check {check!r} (known: {', '.join(sorted(CHECKS))})")
    threshold = {key: float(raw[key]) for key in ("min", "max") if key in raw}
    if not threshold and check in _PRESENCE_CHECKS:
        threshold = {"min": 1.0}
    if not threshold:
        raise RulePackError(f"{where}: give a `min` or `max` threshold")
    reserved = {"id", "name", "category", "check", "min", "max", "summary"}
    params = {key: value for key, value in raw.items() if key not in reserved}
    if not any(key in params for key in ("columns", "select", "tables", "pairs", "links")):
        raise RulePackError(f"{where}: say what it applies to (`columns`, `select`, `tables`, `pairs` or `links`)")
    if "select" in params and params["select"] not in SELECTORS:
        raise RulePackError(f"{where}: unknown selector {params['select']!r} (known: {', '.join(sorted(SELECTORS))})")
    if check == "conditional_completeness" and not ("when" in params and params.get("values")):
        raise RulePackError(f"{where}: a conditional_completeness rule needs `when` and `values`")
    summary = bool(raw.get("summary", False))
    return RuleSpec(str(rule_id), str(raw.get("name", rule_id)), str(category), str(check), params, threshold, summary)


# --- evaluation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleResult:
    rule_id: str
    pack: str
    category: str
    name: str
    check: str
    status: str
    observed: float | None
    threshold: dict[str, float]
    summary: bool = False
    missing: tuple[str, ...] = ()
    evidence: dict[str, Any] = field(default_factory=dict)
    message: str = ""


@dataclass(frozen=True)
class CategoryScore:
    name: str
    weight: float
    passed: int
    failed: int
    not_evaluated: int
    not_applicable: int
    score: float | None


@dataclass(frozen=True)
class PackApplication:
    name: str
    applied: bool
    reason: str
    path: str = ""


@dataclass(frozen=True)
class RuleReport:
    results: tuple[RuleResult, ...]
    score: float
    categories: dict[str, CategoryScore]
    packs: tuple[PackApplication, ...] = ()

    def by_id(self, rule_id: str) -> RuleResult:
        for result in self.results:
            if result.rule_id == rule_id:
                return result
        raise KeyError(f"no rule {rule_id!r} in the report")

    def with_status(self, status: str) -> tuple[RuleResult, ...]:
        return tuple(r for r in self.results if r.status == status)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: for reports and asset-check metadata."""
        return dataclasses.asdict(self)


@dataclass
class _Targets:
    """What a rule applies to once names are resolved: column refs, column pairs, links, tables."""

    columns: list[ColumnRef] = field(default_factory=list)
    pairs: list[tuple[ColumnRef, ColumnRef]] = field(default_factory=list)
    links: list[tuple[ColumnRef, ColumnRef, tuple[str, ...]]] = field(default_factory=list)
    tables: list[TablePlan] = field(default_factory=list)
    when: ColumnRef | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.columns or self.pairs or self.links or self.tables)


_SELECTORS: dict[str, Callable[[Catalog], list[ColumnRef]]] = {
    "all_columns": lambda c: c.all_refs(),
    "typed_columns": lambda c: [r for r in c.all_refs() if r.column.target_type not in ("text", "bytea")],
    "date_columns": lambda c: [r for r in c.all_refs() if r.column.target_type in DATE_TYPES],
    "number_columns": lambda c: [r for r in c.all_refs() if r.column.target_type in NUMBER_TYPES],
    "text_columns": lambda c: [r for r in c.all_refs() if r.column.target_type == "text"],
    "id_columns": lambda c: [r for r in c.all_refs() if is_id_like(r.column.name)],
    "key_columns": lambda c: [
        ref for t in c.tables.values() if (k := key_column(t)) is not None and (ref := c.ref(t, k)) is not None
    ],
}
SELECTORS = frozenset({*_SELECTORS, "links", "date_pairs", "tables"})


def _targets(rule: RuleSpec, catalog: Catalog) -> _Targets:
    params, found = rule.params, _Targets()
    select = params.get("select")
    if select in _SELECTORS:
        found.columns = _SELECTORS[select](catalog)
    elif select == "links":
        found.links = [(child, parent, ()) for child, parent in detect_links(catalog)]
    elif select == "date_pairs":
        found.pairs = _date_pairs(catalog)
    elif select == "tables":
        found.tables = list(catalog.tables.values())
    for logical in params.get("columns", []):
        _resolve_into(found.columns, found.missing, catalog, logical)
    for early, late in params.get("pairs", []):
        a, b = catalog.resolve_column(early), catalog.resolve_column(late)
        found.missing.extend(name for name, ref in ((early, a), (late, b)) if ref is None)
        if a is not None and b is not None:
            found.pairs.append((a, b))
    for link in params.get("links", []):
        child, parent = catalog.resolve_column(link["child"]), catalog.resolve_column(link["parent"])
        found.missing.extend(name for name, ref in ((link["child"], child), (link["parent"], parent)) if ref is None)
        if child is not None and parent is not None:
            found.links.append((child, parent, tuple(str(v) for v in link.get("ignore", ()))))
    for logical in params.get("tables", []):
        table = catalog.resolve_table(logical)
        if table is None:
            found.missing.append(logical)
        else:
            found.tables.append(table)
    if "when" in params:
        found.when = catalog.resolve_column(params["when"])
        if found.when is None:
            found.missing.append(params["when"])
    return found


def _date_pairs(catalog: Catalog) -> list[tuple[ColumnRef, ColumnRef]]:
    pairs = []
    for table in catalog.tables.values():
        for early, late in date_order_pairs(table):
            a, b = catalog.ref(table, early), catalog.ref(table, late)
            if a is not None and b is not None:
                pairs.append((a, b))
    return pairs


def _resolve_into(into: list[ColumnRef], missing: list[str], catalog: Catalog, logical: str) -> None:
    ref = catalog.resolve_column(logical)
    if ref is None:
        missing.append(logical)
    else:
        into.append(ref)


@dataclass(frozen=True)
class Observation:
    """One target's evidence: `hits` of `total` (the ratio judged against the rule's threshold)."""

    hits: float
    total: float
    examples: tuple[str, ...] = ()

    @property
    def ratio(self) -> float | None:
        return self.hits / self.total if self.total else None


@dataclass
class _Measured:
    """Counts shared by every pack of one evaluation: each table is scanned once, each
    reference and each table's duplicate rows are queried once."""

    source: TableSource
    markers: tuple[str, ...]
    counts: dict[tuple[str, Measure], int] = field(default_factory=dict)
    orphan_counts: dict[Link, OrphanCount] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)

    def orphans(self, link: Link) -> OrphanCount:
        if link not in self.orphan_counts:
            self.orphan_counts[link] = self.source.orphans(link, self.markers)
        return self.orphan_counts[link]

    def duplicate_rows(self, table: str) -> int:
        if table not in self.duplicates:
            self.duplicates[table] = self.source.duplicate_rows(table)
        return self.duplicates[table]


@dataclass
class _Context:
    catalog: Catalog
    now: datetime
    measured: _Measured

    @property
    def markers(self) -> tuple[str, ...]:
        return self.measured.markers

    def count(self, table: str, measure: Measure) -> int:
        return self.measured.counts[(table, measure)]


Wanted = list[tuple[str, Measure]]
MeasureFor = Callable[[RuleSpec, ColumnRef, _Targets, _Context], Measure]


@dataclass(frozen=True)
class Check:
    """A check kind: the measures it needs from the source, then its observations per target."""

    measures: Callable[[RuleSpec, _Targets, _Context], Wanted]
    observe: Callable[[RuleSpec, _Targets, _Context], dict[str, Observation]]


def _measure(kind: str, *arg_names: str) -> MeasureFor:
    def build(rule: RuleSpec, ref: ColumnRef, targets: _Targets, ctx: _Context) -> Measure:
        return Measure(kind, ref.physical_column, tuple(rule.params.get(name) for name in arg_names))

    return build


def _rows(rule: RuleSpec, ref: ColumnRef, targets: _Targets, ctx: _Context) -> Measure:
    return Measure(m.ROWS)


PRESENT = "present"


def _per_column(numerator: MeasureFor, denominator: MeasureFor | str, *, complement: bool = False) -> Check:
    """hits = numerator, total = denominator (or the column's present values); `complement` turns
    hits into total - hits (missing -> complete)."""

    def denominators(rule: RuleSpec, ref: ColumnRef, targets: _Targets, ctx: _Context) -> list[Measure]:
        if denominator == PRESENT:
            return [Measure(m.ROWS), Measure(m.MISSING, ref.physical_column)]
        return [denominator(rule, ref, targets, ctx)]  # type: ignore[operator]

    def measures(rule: RuleSpec, targets: _Targets, ctx: _Context) -> Wanted:
        wanted = []
        for ref in targets.columns:
            wanted.append((ref.physical_table, numerator(rule, ref, targets, ctx)))
            wanted.extend((ref.physical_table, d) for d in denominators(rule, ref, targets, ctx))
        return wanted

    def observe(rule: RuleSpec, targets: _Targets, ctx: _Context) -> dict[str, Observation]:
        result = {}
        for ref in targets.columns:
            hits = ctx.count(ref.physical_table, numerator(rule, ref, targets, ctx))
            parts = [ctx.count(ref.physical_table, d) for d in denominators(rule, ref, targets, ctx)]
            total = parts[0] - parts[1] if denominator == PRESENT else parts[0]
            result[ref.label] = Observation(total - hits if complement else hits, total)
        return result

    return Check(measures, observe)


def _no_measures(rule: RuleSpec, targets: _Targets, ctx: _Context) -> Wanted:
    return []


def _table_completeness_measures(rule: RuleSpec, targets: _Targets, ctx: _Context) -> Wanted:
    wanted: Wanted = []
    for table in targets.tables:
        physical = ctx.catalog.physical[table.name]
        wanted.append((physical, Measure(m.ROWS)))
        wanted.extend((physical, Measure(m.MISSING, ref.physical_column)) for ref in ctx.catalog.refs(table))
    return wanted


def _table_completeness(rule: RuleSpec, targets: _Targets, ctx: _Context) -> dict[str, Observation]:
    result = {}
    for table in targets.tables:
        physical = ctx.catalog.physical[table.name]
        refs = ctx.catalog.refs(table)
        cells = ctx.count(physical, Measure(m.ROWS)) * len(refs)
        missing = sum(ctx.count(physical, Measure(m.MISSING, ref.physical_column)) for ref in refs)
        result[table.name] = Observation(cells - missing, cells)
    return result


def _pair_measures(rule: RuleSpec, targets: _Targets, ctx: _Context) -> Wanted:
    return [
        (a.physical_table, Measure(kind, a.physical_column, (b.physical_column,)))
        for a, b in targets.pairs
        for kind in (m.ORDERED, m.COMPARABLE)
    ]


def _date_order(rule: RuleSpec, targets: _Targets, ctx: _Context) -> dict[str, Observation]:
    return {
        f"{a.label} <= {b.column.name}": Observation(
            ctx.count(a.physical_table, Measure(m.ORDERED, a.physical_column, (b.physical_column,))),
            ctx.count(a.physical_table, Measure(m.COMPARABLE, a.physical_column, (b.physical_column,))),
        )
        for a, b in targets.pairs
    }


def _presence(rule: RuleSpec, targets: _Targets, ctx: _Context) -> dict[str, Observation]:
    result = {ref.label: Observation(1, 1) for ref in targets.columns}
    result.update({table.name: Observation(1, 1) for table in targets.tables})
    result.update({name: Observation(0, 1) for name in targets.missing})
    return result


def _plan_tables_present(rule: RuleSpec, targets: _Targets, ctx: _Context) -> dict[str, Observation]:
    plan = ctx.catalog.plan
    return {t.name: Observation(int(t.name in ctx.catalog.tables), 1) for t in plan.tables}


def _plan_columns_present(rule: RuleSpec, targets: _Targets, ctx: _Context) -> dict[str, Observation]:
    result = {}
    for table in targets.tables:
        missing = ctx.catalog.missing_columns(table)
        result[table.name] = Observation(len(table.columns) - len(missing), len(table.columns), missing[:5])
    return result


def _identifiers_valid(rule: RuleSpec, targets: _Targets, ctx: _Context) -> dict[str, Observation]:
    plan = ctx.catalog.plan
    table_names = [t.pg_name for t in plan.tables]
    result = {}
    for table in plan.tables:
        names = [table.pg_name] + [c.pg_name for c in table.columns]
        siblings = [c.pg_name for c in table.columns]
        bad = [
            name
            for i, name in enumerate(names)
            if len(name.encode("utf-8")) > PG_IDENTIFIER_BYTES
            or (table_names.count(name) > 1 if i == 0 else siblings.count(name) > 1)
        ]
        result[table.name] = Observation(len(names) - len(bad), len(names), tuple(bad[:5]))
    return result


def _planned_type(rule: RuleSpec, targets: _Targets, ctx: _Context) -> dict[str, Observation]:
    allowed = set(rule.params.get("types", ()))
    return {
        ref.label: Observation(int(ref.column.target_type in allowed), 1, (ref.column.target_type,))
        for ref in targets.columns
    }


def _orphans(rule: RuleSpec, targets: _Targets, ctx: _Context) -> dict[str, Observation]:
    result = {}
    for child, parent, ignore in targets.links:
        found = ctx.measured.orphans(reference(child, parent, ignore))
        result[f"{child.label} -> {parent.label}"] = Observation(found.orphans, found.checked, found.examples)
    return result


def _duplicate_rows(rule: RuleSpec, targets: _Targets, ctx: _Context) -> dict[str, Observation]:
    result = {}
    for table in targets.tables:
        physical = ctx.catalog.physical[table.name]
        rows = ctx.count(physical, Measure(m.ROWS))
        result[table.name] = Observation(ctx.measured.duplicate_rows(physical), rows)
    return result


def _table_rows(rule: RuleSpec, targets: _Targets, ctx: _Context) -> Wanted:
    return [(ctx.catalog.physical[t.name], Measure(m.ROWS)) for t in targets.tables]


def _conforming(rule: RuleSpec, ref: ColumnRef, targets: _Targets, ctx: _Context) -> Measure:
    return Measure(m.CONFORMING, ref.physical_column, (ref.column.target_type,))


def _value_range(rule: RuleSpec, ref: ColumnRef, targets: _Targets, ctx: _Context) -> Measure:
    p = rule.params
    bounds = (p.get("low"), p.get("high"), bool(p.get("low_inclusive", True)), bool(p.get("high_inclusive", True)))
    return Measure(m.VALUE_IN_RANGE, ref.physical_column, bounds)


def _date_range(rule: RuleSpec, ref: ColumnRef, targets: _Targets, ctx: _Context) -> Measure:
    start, end = (_date_bound(rule.params.get(key), ctx.now) for key in ("start", "end"))
    return Measure(m.DATE_IN_RANGE, ref.physical_column, (start, end))


def _date_parseable(rule: RuleSpec, ref: ColumnRef, targets: _Targets, ctx: _Context) -> Measure:
    return Measure(m.DATE_PARSEABLE, ref.physical_column)


def _text_values(rule: RuleSpec, ref: ColumnRef, targets: _Targets, ctx: _Context) -> Measure:
    return Measure(m.TEXT_VALUES, ref.physical_column)


def may_hold_invalid_utf8(column: ColumnPlan) -> bool:
    """Whether a text column needs the (costly, per character) UTF-8 test: unless the profile
    proved the snapshot's column held valid UTF-8 text only, it does. Cleaning never adds bytes."""
    profile = column.profile
    return profile.rows == 0 or profile.invalid_utf8 > 0 or profile.storage_classes.get("blob", 0) > 0


def _utf8_measures(rule: RuleSpec, targets: _Targets, ctx: _Context) -> Wanted:
    wanted = [(ref.physical_table, Measure(m.TEXT_VALUES, ref.physical_column)) for ref in targets.columns]
    wanted += [
        (ref.physical_table, Measure(m.INVALID_UTF8, ref.physical_column))
        for ref in targets.columns
        if may_hold_invalid_utf8(ref.column)
    ]
    return wanted


def _invalid_utf8(rule: RuleSpec, targets: _Targets, ctx: _Context) -> dict[str, Observation]:
    """Columns the profile proved valid count as clean without the per-character scan."""
    result = {}
    for ref in targets.columns:
        texts = ctx.count(ref.physical_table, Measure(m.TEXT_VALUES, ref.physical_column))
        suspect = may_hold_invalid_utf8(ref.column)
        bad = ctx.count(ref.physical_table, Measure(m.INVALID_UTF8, ref.physical_column)) if suspect else 0
        result[ref.label] = Observation(bad, texts)
    return result


def _missing_when(rule: RuleSpec, ref: ColumnRef, targets: _Targets, ctx: _Context) -> Measure:
    when = targets.when
    assert when is not None
    return Measure(m.MISSING_WHEN, ref.physical_column, (when.physical_column, *rule.params.get("values", ())))


def _condition_rows(rule: RuleSpec, ref: ColumnRef, targets: _Targets, ctx: _Context) -> Measure:
    when = targets.when
    assert when is not None
    return Measure(m.CONDITION_ROWS, when.physical_column, tuple(rule.params.get("values", ())))


def _date_bound(text: str | None, now: datetime) -> str | None:
    """`now`, `now+30d`, `now-7d` or an ISO date -> `YYYY-MM-DD HH:MM:SS`."""
    if text is None:
        return None
    match = re.fullmatch(r"now(?:([+-])(\d+)d)?", str(text).strip())
    if match:
        days = int(match.group(2) or 0) * (-1 if match.group(1) == "-" else 1)
        return (now + timedelta(days=days)).strftime("%Y-%m-%d %H:%M:%S")
    return datetime.fromisoformat(str(text).strip()).strftime("%Y-%m-%d %H:%M:%S")


CHECKS: dict[str, Check] = {
    "tables_present": Check(_no_measures, _plan_tables_present),
    "table_present": Check(_no_measures, _presence),
    "columns_present": Check(_no_measures, _presence),
    "plan_columns_present": Check(_no_measures, _plan_columns_present),
    "identifiers_valid": Check(_no_measures, _identifiers_valid),
    "planned_type": Check(_no_measures, _planned_type),
    "completeness": _per_column(_measure(m.MISSING), _rows, complement=True),
    "table_completeness": Check(_table_completeness_measures, _table_completeness),
    "stored_blanks": _per_column(_measure(m.BLANKS), _rows),
    "conformity": _per_column(_conforming, PRESENT),
    "numeric": _per_column(_measure(m.NUMERIC), PRESENT),
    "integer_range": _per_column(_measure(m.INTEGER_IN_RANGE, "low", "high"), PRESENT),
    "value_range": _per_column(_value_range, PRESENT),
    "value_share": _per_column(_measure(m.VALUE_EQUALS, "value"), PRESENT),
    "date_parseable": _per_column(_date_parseable, PRESENT),
    "date_range": _per_column(_date_range, _date_parseable),
    "date_order": Check(_pair_measures, _date_order),
    "unique": _per_column(_measure(m.DISTINCT_KEYS), PRESENT),
    "duplicate_rows": Check(_table_rows, _duplicate_rows),
    "orphans": Check(_no_measures, _orphans),
    "nul_bytes": _per_column(_measure(m.NUL_BYTES), _text_values),
    "crlf": _per_column(_measure(m.CRLF), _text_values),
    "invalid_utf8": Check(_utf8_measures, _invalid_utf8),
    "conditional_completeness": _per_column(_missing_when, _condition_rows, complement=True),
}
# Checks about presence itself: a missing name is their finding (fail), not a reason to skip them.
_PRESENCE_CHECKS = frozenset({"table_present", "columns_present"})
_PLAN_CHECKS = frozenset({"tables_present", "identifiers_valid"})


def evaluate_rules(
    source: TableSource,
    plan: Plan,
    packs: Sequence[Path] | None = None,
    mapping: Path | None = None,
    *,
    now: datetime | None = None,
) -> RuleReport:
    """Evaluate the packs (default: the shipped ones) against `source`, scored 0-100 by category.

    `mapping` is a user mapping file whose names are tried before the packs' own.
    """
    now = now or datetime.now(UTC).replace(tzinfo=None)
    markers = tuple(plan.settings.get("null_markers", DEFAULT_NULL_MARKERS))
    measured = _Measured(source, markers)
    with source.connected():
        applications, evaluations = _evaluations(source, plan, packs, mapping, lambda c: _Context(c, now, measured))
        for table, measures in _wanted(evaluations).items():
            counts = source.measure(table, measures, markers)
            measured.counts.update({(table, measure): value for measure, value in counts.items()})
        results = [
            _judge(pack, rule, targets[rule.id], ctx) for pack, ctx, targets in evaluations for rule in pack.rules
        ]
    categories = _category_scores([pack for pack, _, _ in evaluations], results)
    for application in applications:
        if not application.applied:
            log.info("rules pack %s not applied: %s", application.name, application.reason)
    return RuleReport(tuple(results), _overall(categories), categories, tuple(applications))


def rule_questions(
    source: TableSource, plan: Plan, packs: Sequence[Path] | None = None, mapping: Path | None = None, *, now: datetime
) -> tuple[dict[str, list[Measure]], list[Link]]:
    """What `evaluate_rules` with the same arguments asks `source`, without counting anything: the
    measures of each table, and the references whose orphans it counts."""
    measured = _Measured(source, tuple(plan.settings.get("null_markers", DEFAULT_NULL_MARKERS)))
    _, evaluations = _evaluations(source, plan, packs, mapping, lambda c: _Context(c, now, measured))
    links = [
        reference(child, parent, ignore)
        for pack, _, targets in evaluations
        for rule in pack.rules
        if rule.check == "orphans" and _evaluable(rule, targets[rule.id])
        for child, parent, ignore in targets[rule.id].links
    ]
    return _wanted(evaluations), links


def reference(child: ColumnRef, parent: ColumnRef, ignore: tuple[str, ...] = ()) -> Link:
    """The link from a child column to the parent column it names, under the source's names."""
    return Link(child.physical_table, child.physical_column, parent.physical_table, parent.physical_column, ignore)


_Evaluation = tuple[RulePack, "_Context", dict[str, "_Targets"]]


def _evaluations(
    source: TableSource,
    plan: Plan,
    packs: Sequence[Path] | None,
    mapping: Path | None,
    context: Callable[[Catalog], _Context],
) -> tuple[list[PackApplication], list[_Evaluation]]:
    """Each pack's application and, for the applied ones, its context and every rule's targets."""
    loaded = [load_pack(path) for path in (shipped_pack_paths() if packs is None else packs)]
    user_mapping = load_mapping(mapping) if mapping is not None else NameMapping()
    applications: list[PackApplication] = []
    evaluations: list[_Evaluation] = []
    for pack in loaded:
        catalog = Catalog(source, plan, user_mapping.merged_over(pack.mapping))
        application = _application(pack, catalog)
        applications.append(application)
        if application.applied:
            evaluations.append((pack, context(catalog), {rule.id: _targets(rule, catalog) for rule in pack.rules}))
    return applications, evaluations


def _application(pack: RulePack, catalog: Catalog) -> PackApplication:
    if not pack.applies_when_tables:
        return PackApplication(pack.name, True, "applies to every database", pack.path)
    found = [name for name in pack.applies_when_tables if catalog.resolve_table(name) is not None]
    if len(found) >= pack.min_tables:
        return PackApplication(pack.name, True, f"tables found: {', '.join(found)}", pack.path)
    return PackApplication(
        pack.name,
        False,
        f"needs {pack.min_tables} of the tables {', '.join(pack.applies_when_tables)}; found {len(found)}",
        pack.path,
    )


def _wanted(evaluations: Sequence[_Evaluation]) -> dict[str, list[Measure]]:
    """Every measure every rule of every pack needs, by table: asked of the source in one query per table."""
    wanted: dict[str, list[Measure]] = defaultdict(list)
    for pack, ctx, targets in evaluations:
        for rule in pack.rules:
            if _evaluable(rule, targets[rule.id]):
                for table, measure in CHECKS[rule.check].measures(rule, targets[rule.id], ctx):
                    wanted[table].append(measure)
    return dict(wanted)


def _evaluable(rule: RuleSpec, targets: _Targets) -> bool:
    if rule.check in _PRESENCE_CHECKS or rule.check in _PLAN_CHECKS:
        return True
    return not targets.missing and not targets.empty


def _result(pack: RulePack, rule: RuleSpec, status: str, observed: float | None = None, **extra: Any) -> RuleResult:
    return RuleResult(rule.id, pack.name, rule.category, rule.name, rule.check, status, observed,
                      dict(rule.threshold), rule.summary, **extra)  # fmt: skip


def _judge(pack: RulePack, rule: RuleSpec, targets: _Targets, ctx: _Context) -> RuleResult:
    if targets.missing and rule.check not in _PRESENCE_CHECKS:
        missing = tuple(targets.missing)
        message = f"not evaluated: cannot find {', '.join(missing)}"
        return _result(pack, rule, NOT_EVALUATED, missing=missing, message=message)
    if targets.empty and rule.check not in _PRESENCE_CHECKS and rule.check not in _PLAN_CHECKS:
        return _result(pack, rule, NOT_APPLICABLE, message="no column of this kind")
    observations = CHECKS[rule.check].observe(rule, targets, ctx)
    evidence: dict[str, Any] = {"targets": {label: _plain(obs) for label, obs in observations.items()}}
    judged = {label: obs.ratio for label, obs in observations.items() if obs.ratio is not None}
    if not judged:
        return _result(pack, rule, NOT_APPLICABLE, evidence=evidence, message="no values to judge")
    failing = [label for label, ratio in judged.items() if not _meets(ratio, rule.threshold)]
    evidence["failing"] = failing
    message = f"{len(failing)} of {len(judged)} failing: {', '.join(failing[:5])}" if failing else "all pass"
    message = f"{message} ({len(judged)} checked)"
    return _result(pack, rule, FAIL if failing else PASS, _worst(judged, rule.threshold, failing),
                   missing=tuple(targets.missing), evidence=evidence, message=message)  # fmt: skip


def _plain(observation: Observation) -> dict[str, Any]:
    ratio = observation.ratio
    plain: dict[str, Any] = {"hits": observation.hits, "total": observation.total,
                             "ratio": None if ratio is None else round(ratio, 6)}  # fmt: skip
    if observation.examples:
        plain["examples"] = list(observation.examples)
    return plain


def _meets(ratio: float, threshold: Mapping[str, float]) -> bool:
    low, high = threshold.get("min"), threshold.get("max")
    return (low is None or ratio >= low - _EPSILON) and (high is None or ratio <= high + _EPSILON)


def _worst(judged: Mapping[str, float], threshold: Mapping[str, float], failing: Sequence[str]) -> float:
    if failing:
        return judged[failing[0]]
    ratios = list(judged.values())
    return max(ratios) if "max" in threshold and "min" not in threshold else min(ratios)


def _category_scores(packs: Sequence[RulePack], results: Sequence[RuleResult]) -> dict[str, CategoryScore]:
    """Categories merged by name across the applied packs; a category's weight is the mean of the
    packs' weights for it (so the weights still sum to 100). Summary rules are not counted."""
    names = list(dict.fromkeys(name for pack in packs for name in pack.categories))
    scores = {}
    for name in names:
        weight = sum(pack.categories.get(name, 0.0) for pack in packs) / len(packs)
        counted = [r for r in results if r.category == name and not r.summary]
        passed = sum(r.status == PASS for r in counted)
        failed = sum(r.status == FAIL for r in counted)
        judged = passed + failed
        scores[name] = CategoryScore(
            name=name,
            weight=weight,
            passed=passed,
            failed=failed,
            not_evaluated=sum(r.status == NOT_EVALUATED for r in counted),
            not_applicable=sum(r.status == NOT_APPLICABLE for r in counted),
            score=100.0 * passed / judged if judged else None,
        )
    return scores


def _overall(categories: Mapping[str, CategoryScore]) -> float:
    """Weighted over the categories that judged at least one rule; 100 when none did."""
    judged = [c for c in categories.values() if c.score is not None and c.weight > 0]
    weight = sum(c.weight for c in judged)
    if not weight:
        return 100.0
    return round(sum(c.weight * (c.score or 0.0) for c in judged) / weight, 2)
