# kagoflow worker image: `docker build -t kagoflow .` then see infra/compose.yaml for a full stack.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# kagoflow/streams and kagoflow/agents are symlinks to the top-level folders: copy both sides.
COPY pyproject.toml README.md ./
COPY kagoflow ./kagoflow
COPY streams ./streams
COPY agents ./agents
RUN pip install . && rm -rf build *.egg-info

COPY rules ./rules
COPY templates ./templates
COPY infra ./infra

RUN useradd --system --uid 10001 --home-dir /data --create-home kagoflow
USER kagoflow

# The installed package does not live next to rules/ and templates/: point at them explicitly.
ENV KAGOFLOW_RULES_DIR=/app/rules \
    KAGOFLOW_TEMPLATES_DIR=/app/templates \
    KAGOFLOW_DATA_DIR=/data \
    KAGOFLOW_WEB_HOST=0.0.0.0
# Only the public server (tracking links, /health) listens outside the container; the operator server
# (API, metrics: KAGOFLOW_OPERATOR_PORT 16067) stays on 127.0.0.1 unless KAGOFLOW_OPERATOR_HOST and
# KAGOFLOW_OPERATOR_TOKEN are set. KAGOFLOW_TRACKING_SECRET has no usable default: pass one at run time.
VOLUME ["/data"]
EXPOSE 16066

CMD ["kagoflow", "worker"]
