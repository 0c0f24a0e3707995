"""``python -m llmpulse``: the ``llmpulse`` command."""

from llmpulse.cli import main

raise SystemExit(main())
