# One image for every L9 agent: the command `l9 agent run NAME` picks the agent
# (docker-compose.yml runs one service per agent from this image).
FROM python:3.11-slim

# A C compiler: the SymPy worker builds compiled numeric kernels (Cython -> C -> .so).
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY envelope ./envelope
COPY bus ./bus
COPY agents ./agents
COPY governance ./governance
COPY memory ./memory
COPY l9 ./l9
RUN pip install --no-cache-dir . && rm -rf /app/build

# An unprivileged user owning the folders the compose file mounts named volumes on
# (a new named volume takes the owner of the image's folder).
RUN useradd --system --uid 10001 --home-dir /var/lib/l9 --create-home l9 \
    && mkdir -p /extractions /checkpoints /var/lib/l9/kernels /var/lib/l9/reports \
    && chown -R l9:l9 /extractions /checkpoints /var/lib/l9
USER l9
WORKDIR /var/lib/l9
ENV L9_HOME=/var/lib/l9 \
    PYTHONUNBUFFERED=1

# An agent's admin port (l9/admin.py) when L9_ADMIN_PORT is 9464, as in the compose file;
# its /healthz is the health check (a container without the port, a CLI run, has none).
EXPOSE 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:9464/healthz', timeout=4)"

ENTRYPOINT ["l9"]
CMD ["--help"]
