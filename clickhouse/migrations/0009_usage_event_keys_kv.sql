-- The sink's dedup lookup as point reads (flow: llm.outcomes.v1 -> usage sink ->
-- usage_events -> usage_event_keys_mv -> usage_event_keys; the lookup of
-- processors/sinks/usage.py).
--
-- Migration 0007's key table was sorted by event_id, but a sparse index cannot rule
-- out an id that falls inside a granule's range: every looked-up id, stored or new,
-- cost a granule read (about 17 us), so the lookup still grew with the table.
-- EmbeddedRocksDB holds one value per key, and `event_id IN (...)` on its primary
-- key is a multi-get: one point read per id (ReadType GetKeys in EXPLAIN), no scan.
--
-- The table keeps its name, columns and view, so the sink's query and insert path
-- are unchanged. The view writes a row's key in the insert that stores the row, as
-- in 0007: an insert that fails or dies half-way was not acknowledged, so its batch
-- is redelivered and inserted again (its keys not being found), and that insert
-- writes the keys. A stored key is written again by a later copy of its id (as a
-- merge of 0007's table kept the last); the lookup only asks whether an id is
-- stored and with which hash, whatever its event time.
--
-- Run it with the usage sink stopped: the table is empty until the last statement
-- has copied the keys of the rows already stored. RocksDB is local to one server:
-- on a cluster keep 0007's replicated table (README "Scaling").
DROP VIEW IF EXISTS usage_event_keys_mv;

DROP TABLE IF EXISTS usage_event_keys;

CREATE TABLE IF NOT EXISTS usage_event_keys
(
    event_id     UUID,
    payload_hash FixedString(64)
)
ENGINE = EmbeddedRocksDB
PRIMARY KEY event_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_event_keys_mv TO usage_event_keys AS
SELECT event_id, payload_hash FROM usage_events;

INSERT INTO usage_event_keys SELECT event_id, payload_hash FROM usage_events;
