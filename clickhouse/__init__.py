"""ClickHouse migrations and named queries (package data, read with ``importlib.resources``)."""
