"""Example price list and breaker configuration (package data; ``llmpulse pricing load``)."""
