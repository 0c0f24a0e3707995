"""Kafka, Prometheus and compose templates (package data, read with ``importlib.resources``)."""
