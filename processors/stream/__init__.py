"""The stream edge: bytes in and out, Kafka, Faust, ClickHouse, DLQ, metrics."""
