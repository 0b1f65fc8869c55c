"""hashserver: serves a directory of checksum-named buffers over HTTP, on Sanic.

``hashserver.app`` (for ``sanic hashserver.app --workers 4``) is created on
first access and configured from ``HASHSERVER_*`` variables when the server
starts; importing the package creates and starts nothing.
"""

from .config import Config, ConfigError
from .server import create_app

__all__ = ["Config", "ConfigError", "create_app", "app"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "app":
        from sanic import Sanic

        try:
            application = Sanic.get_app("hashserver")
        except Exception:
            application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(f"module 'hashserver' has no attribute {name!r}")
