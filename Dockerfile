# One image for every L9 agent: `l9 agent run NAME` picks the agent.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY envelope ./envelope
COPY bus ./bus
COPY agents ./agents
COPY governance ./governance
COPY memory ./memory
COPY l9 ./l9
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["l9"]
