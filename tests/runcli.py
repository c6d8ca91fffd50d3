"""Call the `diffheads` command line in-process, as a test would from a shell."""

from __future__ import annotations

import contextlib
import io
import json

from diffheads.cli import main


def run_cli(*args: str) -> dict:
    """Run `diffheads ARGS`, assert it succeeded, and return the JSON it printed."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(list(args))
    assert code == 0, f"diffheads {' '.join(args)} exited {code}"
    return json.loads(buf.getvalue())
