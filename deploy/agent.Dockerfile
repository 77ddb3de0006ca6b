# edgefleet device agent, lean: the `agent` extra only (ONNX Runtime, httpx, TUF; no server stack, no
# torch). Build from the repository root:
#   docker build -f deploy/agent.Dockerfile -t edgefleet-agent .
# Enroll once into the state volume, then run:
#   docker run -v agent-state:/var/lib/edgefleet edgefleet-agent enroll --server URL --token TOKEN --ca ca.crt
#   docker run -v agent-state:/var/lib/edgefleet edgefleet-agent run

FROM python:3.11-slim AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# the exact wheels resolved here are what stage 2 installs (requirements.txt names each file)
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[agent]" \
    && find /wheels -name "*.whl" | sort > /wheels/requirements.txt

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EDGEFLEET_AGENT_STATE_DIR=/var/lib/edgefleet
RUN groupadd --system --gid 10002 edgefleet \
    && useradd --system --uid 10002 --gid edgefleet --home-dir /var/lib/edgefleet --shell /usr/sbin/nologin edgefleet \
    && mkdir -p /var/lib/edgefleet && chown edgefleet:edgefleet /var/lib/edgefleet
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels --requirement /wheels/requirements.txt \
    && rm -rf /wheels
USER 10002:10002
WORKDIR /var/lib/edgefleet
VOLUME ["/var/lib/edgefleet"]
ENTRYPOINT ["edgefleet", "agent"]
CMD ["run", "--no-progress"]
