# syntax=docker/dockerfile:1
# mcp-fastproxy image: a builder that compiles the Cython fast path (and fails if it
# cannot), then a slim non-root runtime that runs `mcp-fastproxy serve`, the same command
# as outside Docker (tests/integration/test_dockerfile.py runs it that way).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: compiler, PROXY_REQUIRE_EXTENSIONS=1, a virtualenv holding everything ---------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PROXY_REQUIRE_EXTENSIONS=1
# The compiler stays in this stage; the base image is pinned and the runtime never sees it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY proxy ./proxy
# A checkout may hold an in-place build from the host (other libc, other Python): drop it so
# the extension is always compiled here. A failed compile is fatal (PROXY_REQUIRE_EXTENSIONS),
# and so is an install that imports the twin (-I: the installed package, not ./proxy).
RUN rm -f proxy/*.so proxy/_fastpath.c \
 && pip install . \
 && python -I -c "import proxy.fastpath as f; assert f.IMPLEMENTATION == 'c', f.IMPLEMENTATION"

# --- runtime: slim, non-root, no compiler, no pip cache -------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="mcp-fastproxy" \
      org.opencontainers.image.description="Gateway and reverse proxy for MCP servers" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    PROXY_HOST=0.0.0.0 PROXY_PORT=8787 PROXY_REQUIRE_EXTENSIONS=1
RUN groupadd --system --gid 10001 proxy \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin proxy
COPY --from=builder /opt/venv /opt/venv
# The image must not ship the pure-Python twin as its only fast path.
RUN python -c "import proxy.fastpath as f; assert f.IMPLEMENTATION == 'c', f.IMPLEMENTATION"
USER 10001:10001
EXPOSE 8787
# Liveness only (/healthz never touches Redis or upstreams); orchestrators use /readyz for
# traffic. PROXY_PORT is honoured so a changed port keeps the check meaningful.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('PROXY_PORT') or '8787'; sys.exit(urllib.request.urlopen('http://127.0.0.1:' + port + '/healthz', timeout=2).status != 200)"]
# Granian handles SIGTERM itself: the gateway drains for drain_seconds, then in-flight
# requests get shutdown_timeout seconds. Give `docker stop` / compose more than their sum
# (stop_grace_period), since Docker's default is 10 s.
STOPSIGNAL SIGTERM
# Upstreams and the session store come from PROXY_UPSTREAM, PROXY_SESSION_STORE, ...
# or a mounted file named by PROXY_CONFIG.
ENTRYPOINT ["mcp-fastproxy"]
CMD ["serve"]
