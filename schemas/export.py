"""JSON Schema export of every registry model to ``schemas/json/<topic>.schema.json``.

Run ``python -m llmpulse.schemas.export`` after changing a model; a test fails while the
checked-in files differ from the models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from llmpulse.schemas.topics import TOPICS

JSON_DIR = Path(__file__).resolve().parent / "json"


def render() -> dict[str, str]:
    """File name -> JSON text for every topic's model (deterministic)."""
    out: dict[str, str] = {}
    for name, spec in sorted(TOPICS.items()):
        schema = spec.model.model_json_schema(mode="validation")
        schema["$id"] = f"https://llmpulse.dev/schemas/{name}.schema.json"
        schema["x-topic"] = {
            "name": name,
            "key": spec.key_field,
            "cleanup_policy": spec.cleanup_policy,
            "dlq": spec.dlq,
        }
        out[f"{name}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def main() -> int:
    """Write the schema files; ``--check`` only reports whether they are current."""
    check = "--check" in sys.argv[1:]
    stale = []
    for filename, text in render().items():
        path = JSON_DIR / filename
        if not path.exists() or path.read_text() != text:
            stale.append(filename)
            if not check:
                path.write_text(text)
    if check and stale:
        print(
            f"out of date: {', '.join(stale)} (run python -m llmpulse.schemas.export)",
            file=sys.stderr,
        )
        return 1
    print("schemas up to date" if check else f"wrote {len(render())} schema files to {JSON_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
