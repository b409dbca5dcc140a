"""Everything the broker keeps, kept in Redis."""
