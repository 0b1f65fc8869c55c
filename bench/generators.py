"""Which load generator drives a run: wrk when installed, else the built-in client.

Kept apart from :mod:`bench.load` (the types both generators use), so the
generators import the types and this module imports the generators, never
the other way round.
"""

from __future__ import annotations

import shutil

from .load import LoadGenerator
from .pyclient import PythonClient
from .wrk import Wrk


def choose_generator(kind: str, client_processes: int | None) -> tuple[LoadGenerator, str | None]:
    """wrk when installed (or asked for), else the built-in client; and a note saying so."""
    if kind == "python":
        return PythonClient(client_processes), None
    if shutil.which("wrk"):
        return Wrk(), None
    if kind == "wrk":
        raise SystemExit("bench: --client wrk, but wrk is not installed "
                         "(Debian/Ubuntu: apt-get install wrk)")
    note = ("wrk is not installed (Debian/Ubuntu: apt-get install wrk): using the built-in "
            "Python client, which may itself be the limit -- figures are lower bounds")
    return PythonClient(client_processes), note
