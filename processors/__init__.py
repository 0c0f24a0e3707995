"""llmpulse stream processors: settings, codec, DLQ, workers, sinks and the CLI."""
