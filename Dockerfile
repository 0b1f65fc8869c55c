# hashserver (Sanic, multi-process) in a container.
#
#   docker build -t hashserver-sanic .     (add --build-arg HASHSERVER_EXTRAS=s3 for S3 buckets)
#   docker run -d -p 127.0.0.1:8000:8000 -v "$PWD/buffers:/buffers" \
#       -e HASHSERVER_WRITABLE=1 --user "$(id -u):$(id -g)" hashserver-sanic
#
# Settings come from HASHSERVER_* variables (see the README); inside the
# container the server serves /buffers on 0.0.0.0:8000 with 4 workers unless
# told otherwise.  It runs as any uid:gid (--user) and writes nowhere but the
# buffer directory and /dev/shm (the shared index).

# ---- build: a virtual environment with the package and its dependencies
FROM python:3.12-slim AS build
# Extras of the package to install too, e.g. --build-arg HASHSERVER_EXTRAS=s3 for s3:// buckets.
ARG HASHSERVER_EXTRAS=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY . /src
RUN python3 -m venv /opt/hashserver \
 && /opt/hashserver/bin/python3 -m pip install --no-cache-dir "/src${HASHSERVER_EXTRAS:+[$HASHSERVER_EXTRAS]}" \
 && /opt/hashserver/bin/python3 -m pip uninstall --yes pip \
 && /opt/hashserver/bin/sanic --version

# ---- run: the base image plus that environment; no compilers, no pip cache
FROM python:3.12-slim
COPY --from=build /opt/hashserver /opt/hashserver
ENV PATH=/opt/hashserver/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HASHSERVER_DIRECTORY=/buffers \
    HASHSERVER_HOST=0.0.0.0 \
    HASHSERVER_PORT=8000 \
    HASHSERVER_WORKERS=4
# The mount point of the buffer directory.  Left root-owned: a writable server
# running as a non-root uid without a mounted directory refuses to start,
# rather than writing buffers into the container's throw-away layer.
RUN mkdir -p /buffers
EXPOSE 8000

# GET /healthcheck on the port the server listens on; python3's urllib, no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, sys, urllib.request; h = os.environ.get('HASHSERVER_HOST') or '0.0.0.0'; h = '127.0.0.1' if h in ('0.0.0.0', '::', '[::]') else h; h = '[' + h + ']' if ':' in h and not h.startswith('[') else h; r = urllib.request.urlopen('http://%s:%s/healthcheck' % (h, os.environ.get('HASHSERVER_PORT') or '8000'), timeout=4); sys.exit(0 if r.status == 200 else 1)"]

# Sanic's own command line binds to HASHSERVER_HOST:HASHSERVER_PORT with
# HASHSERVER_WORKERS processes; the app reads every other HASHSERVER_* itself.
# `exec` makes Sanic the process that receives `docker stop`'s SIGTERM.
CMD ["/bin/sh", "-c", "exec sanic hashserver.app --host \"${HASHSERVER_HOST:-0.0.0.0}\" --port \"${HASHSERVER_PORT:-8000}\" --workers \"${HASHSERVER_WORKERS:-4}\""]
