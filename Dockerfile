# The sidecar-webhook server image: `docker build -t sidecar-webhook:dev .` (loading it into a cluster: deploy/README.md).
#
# The base is pinned by tag only: this file was written offline, where the digest could not be looked up.
# Pin it fully with `python:3.11-slim-bookworm@sha256:<digest>` (docker buildx imagetools inspect ...).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Builder: installs the package and its dependencies into a venv at the path it keeps later.
FROM ${PYTHON_IMAGE} AS builder
# The venv's bin first on PATH: `pip` below is the venv's (and hadolint can check the call).
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY webhook/ webhook/
# constraints.txt pins every dependency to the versions the test suite ran with. Then the venv sheds its
# installers: pip, setuptools and pkg_resources (25 MB) are never used at runtime (the package is built in
# pip's isolated build environment, not with the venv's setuptools).
RUN pip install --no-cache-dir --constraint constraints.txt . \
 && pip uninstall --yes --no-cache-dir setuptools pip

# Runtime: the same base plus the venv; no pip, no setuptools, no sources, no build tools.
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SIDECAR_WEBHOOK_HOST=0.0.0.0 \
    SIDECAR_WEBHOOK_CERT_DIR=/etc/sidecar-webhook/tls
COPY --from=builder /opt/venv /opt/venv
# Numeric, so the kubelet can check runAsNonRoot; deploy/deployment.yaml runs as the same user.
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["sidecar-webhook"]
CMD ["serve"]
