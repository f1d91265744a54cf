# syntax=docker/dockerfile:1
# Builder: compiles the Cython fast path; the build fails if it cannot.
FROM python:3.11-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PROXY_REQUIRE_EXTENSIONS=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY proxy ./proxy
RUN pip wheel --wheel-dir /wheels .

# Runtime: slim, non-root, the same command as outside Docker.
FROM python:3.11-slim-bookworm
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    PROXY_HOST=0.0.0.0 PROXY_PORT=8787 PROXY_REQUIRE_EXTENSIONS=1
COPY --from=builder /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels \
 && python -c "import proxy.fastpath as f; assert f.IMPLEMENTATION == 'c', f.IMPLEMENTATION" \
 && useradd --system --uid 10001 --no-create-home proxy
USER 10001
EXPOSE 8787
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8787/healthz', timeout=2).status != 200)"]
# Upstreams and the session store come from PROXY_UPSTREAM, PROXY_SESSION_STORE, ...
# or a mounted file named by PROXY_CONFIG.
ENTRYPOINT ["mcp-fastproxy"]
CMD ["serve"]
