# syntax=docker/dockerfile:1
# Build: docker build -t authz .
# Run:   docker run --rm -p 9000:9000 -v "$PWD/examples/policies:/policies:ro" authz --policy /policies

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY authz ./authz
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# Non-root, no shell tools needed at run time; writes nothing to the root filesystem.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin authz
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-compile /wheels/*.whl && rm -rf /wheels
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AUTHZ_LOG_FORMAT=json
USER 10001:10001
EXPOSE 9000
ENTRYPOINT ["authz", "serve"]
