"""The catalog log's entry format (stream_app.core.catalog_log), without Redis."""

from stream_app.core.catalog_log import CatalogChange

FIELDS = {b"op": b"upsert", b"item": b"42", b"seq": b"7", b"ts": b"1700000000.5"}


def test_an_entry_reads_the_same_as_a_mapping_or_flat():
    # Flat: how redis-py 8.1 returns XRANGE inside a Redis Cluster transaction.
    flat = [part for pair in FIELDS.items() for part in pair]
    expected = CatalogChange("upsert", "42", 7, 1700000000.5)
    assert CatalogChange.from_entry(FIELDS) == expected
    assert CatalogChange.from_entry(flat) == expected
