# syntax=docker/dockerfile:1
#
# authz: Envoy ext_authz v3 server. Two stages: the first builds wheels and
# installs them into a virtual environment at /opt/authz; the second copies only
# that environment onto a fresh slim Python. See docs/deploy-kubernetes.md.
#
#   docker build -t authz:0.1.0 .
#   docker run --rm -p 9000:9000 --read-only \
#     -v "$PWD/examples/policies:/etc/authz/policies:ro" authz:0.1.0
#
# For reproducible builds pin the base by digest, e.g.
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Only what `pip wheel .` needs: the generated protobuf code is committed in
# authz/_proto, so no protoc runs here.
COPY pyproject.toml README.md ./
COPY authz ./authz
# Wheels for authz and every dependency (all have manylinux wheels: no compiler).
RUN pip wheel --wheel-dir /wheels .
# A venv without pip: the runtime stage gets the application and nothing else.
# Bytecode is compiled here with unchecked hashes, so the read-only runtime
# never needs to write (or re-validate) a .pyc.
RUN python -m venv --without-pip /opt/authz \
 && pip --python /opt/authz/bin/python install --no-index --no-compile \
        --find-links /wheels /wheels/*.whl \
 && python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/authz/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="authz" \
      org.opencontainers.image.description="Envoy ext_authz v3 server with Istio RequestAuthentication and AuthorizationPolicy semantics" \
      org.opencontainers.image.licenses="Apache-2.0"
# A numeric, non-root user with no home and no login shell. Kubernetes'
# runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid 10001 authz \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --no-log-init \
        --home-dir /nonexistent --shell /usr/sbin/nologin authz
COPY --from=build /opt/authz /opt/authz
ENV PATH=/opt/authz/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AUTHZ_LOG_FORMAT=json \
    AUTHZ_POLICY=/etc/authz/policies
WORKDIR /
USER 10001:10001
# gRPC only: Check, health, reflection. The admin HTTP port (9090) binds
# 127.0.0.1 by default and is deliberately not exposed.
EXPOSE 9000
ENTRYPOINT ["authz", "serve"]
