from .cli import main

# Sanic's worker processes are spawned and re-import this module as __mp_main__.
if __name__ == "__main__":
    raise SystemExit(main())
