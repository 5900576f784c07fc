import pytest

from servicedesk_etl.profiling.identifiers import PG_MAX_IDENTIFIER_BYTES, pg_names, shortened

LONG_X = "col_very_long_name_that_exceeds_postgresql_identifier_limit_aaax"
LONG_Y = "col_very_long_name_that_exceeds_postgresql_identifier_limit_aaay"


@pytest.mark.parametrize("name", ["TKT-Ticket ID", "TKT-Job#/Ref#", "Order", "user", "MixedCase", "a" * 63, "é" * 31])
def test_names_postgres_accepts_are_kept(name):
    mapping = pg_names([name])[0]
    assert (mapping.pg_name, mapping.renamed) == (name, False)


def test_names_sharing_their_first_63_bytes_get_distinct_short_names():
    mapped = pg_names([LONG_X, LONG_Y])
    assert LONG_X[:63] == LONG_Y[:63]
    assert mapped[0].pg_name != mapped[1].pg_name
    assert all(len(m.pg_name.encode()) <= PG_MAX_IDENTIFIER_BYTES for m in mapped)
    assert all(m.pg_name.startswith("col_very_long_name") and "64 bytes" in m.note for m in mapped)


def test_shortening_is_deterministic_and_cuts_at_character_boundaries():
    name = "é" * 40
    assert shortened(name) == shortened(name)
    assert len(shortened(name).encode()) <= PG_MAX_IDENTIFIER_BYTES
    shortened(name).encode().decode("utf-8")


def test_a_short_name_never_takes_an_original_name():
    long_name = "x" * 70
    taken = shortened(long_name)
    mapped = pg_names([taken, long_name])
    assert mapped[0].pg_name == taken
    assert mapped[1].pg_name not in {taken} and len(mapped[1].pg_name.encode()) <= 63


def test_system_column_names_are_renamed_for_columns_only():
    assert pg_names(["xmin"])[0].pg_name != "xmin"
    assert pg_names(["xmin"], columns=False)[0].pg_name == "xmin"
