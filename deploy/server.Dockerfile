# edgefleet control plane. Build from the repository root:
#   docker build -f deploy/server.Dockerfile -t edgefleet-server .
# Stage 1 builds edgefleet's wheel and every dependency's wheel; stage 2 installs them offline into a
# slim image that runs as an unprivileged user (uid 10001) with its state in the /data volume.

FROM python:3.11-slim AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# the exact wheels resolved here are what stage 2 installs (requirements.txt names each file)
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[server,otel]" \
    && find /wheels -name "*.whl" | sort > /wheels/requirements.txt

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EDGEFLEET_SERVER_DATA_DIR=/data
RUN groupadd --system --gid 10001 edgefleet \
    && useradd --system --uid 10001 --gid edgefleet --home-dir /data --shell /usr/sbin/nologin edgefleet \
    && mkdir -p /data && chown edgefleet:edgefleet /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels --requirement /wheels/requirements.txt \
    && rm -rf /wheels
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8700
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8700/healthz', timeout=4)"]
# Clear text inside the compose network; give --tls-cert/--tls-key (or a TLS-terminating proxy) in front
# of anything devices reach over a real network.
ENTRYPOINT ["edgefleet", "server", "run", "--host", "0.0.0.0", "--port", "8700"]
CMD ["--insecure-http"]
