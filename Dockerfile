# polyllama for Linux parity. Every stage sets up and builds exactly as a native machine does:
# scripts/bootstrap.sh makes the project's .venv (what ./run does), then each port's own
# installer (`invoke install --ports X`: the same pinned versions, from the same registries) and
# its manifest's build commands (`invoke build-all --ports X --strict`). The final image holds the
# orchestrator and every port's build.
#
#   invoke build-all --docker                    full image, tagged polyllama:<git commit>
#   invoke build-all --docker --target slim      reduced image: Python reference + C
#
# BASE is a build argument so that hosts without registry access can use a local Debian image
# (scripts/podman-setup.sh makes one with debootstrap). Stages reach Debian's mirror and PyPI,
# crates.io, the Go module proxy and Maven Central, so build with host networking.
ARG BASE=debian:bookworm-slim

# ---------------------------------------------------------------- base: Python, .venv, orchestrator
FROM ${BASE} AS base
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 POLYLLAMA_IN_CONTAINER=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    POLYLLAMA_ROOT=/opt/polyllama
# a proxy's CA, when the build host has one (see docker/certs/README.md): every trust store gets it
COPY docker/certs/ /opt/certs/
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates build-essential git \
    && if [ -s /opt/certs/host-ca.crt ]; then \
         cp /opt/certs/host-ca.crt /usr/local/share/ca-certificates/polyllama-host-ca.crt && update-ca-certificates; fi
WORKDIR /opt/polyllama
COPY pyproject.toml README.md tasks.py ./
COPY scripts scripts
COPY orchestrator orchestrator
COPY schemas schemas
RUN bash -c '. scripts/bootstrap.sh'
ENV PATH=/opt/polyllama/.venv/bin:$PATH
COPY models/manifest.toml models/manifest.toml
COPY impls/python impls/python

# ---------------------------------------------------------------- one stage per port
FROM base AS c
COPY impls/c impls/c
RUN invoke install --ports c && invoke build-all --ports c --strict

FROM base AS cpp
COPY impls/cpp impls/cpp
RUN invoke install --ports cpp && invoke build-all --ports cpp --strict

FROM base AS rust
COPY impls/rust impls/rust
RUN invoke install --ports rust && invoke build-all --ports rust --strict

FROM base AS go
COPY impls/go impls/go
RUN invoke install --ports go && invoke build-all --ports go --strict

FROM base AS java
COPY impls/java impls/java
COPY docker/host-ca-split.sh /opt/certs/
# Java's trust store gets the proxy's CAs too (Maven Central over TLS): split one per file
# before the JDK is installed, so that ca-certificates-java imports every one of them
RUN sh /opt/certs/host-ca-split.sh && invoke install --ports java && invoke build-all --ports java --strict

FROM base AS zig
COPY impls/zig impls/zig
RUN invoke install --ports zig && invoke build-all --ports zig --strict

FROM base AS mojo
COPY impls/mojo impls/mojo
RUN invoke install --ports mojo && invoke build-all --ports mojo --strict

FROM base AS llamacpp
COPY impls/llamacpp impls/llamacpp
RUN invoke install --ports llamacpp && invoke build-all --ports llamacpp --strict

# ---------------------------------------------------------------- slim: the reference and C
FROM base AS slim
COPY --from=c /opt/polyllama/impls/c impls/c
CMD ["python", "-m", "invoke", "--list"]

# ---------------------------------------------------------------- full: every port
FROM base AS full
# Mojo binaries load the MAX runtime from the venv that built them; the frameworks join that venv
COPY --from=mojo /opt/polyllama/.venv /opt/polyllama/.venv
COPY impls/pytorch impls/pytorch
COPY impls/tensorflow impls/tensorflow
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && invoke install --ports pytorch,tensorflow
COPY --from=c /opt/polyllama/impls/c impls/c
COPY --from=cpp /opt/polyllama/impls/cpp impls/cpp
COPY --from=rust /opt/polyllama/impls/rust impls/rust
COPY --from=go /opt/polyllama/impls/go impls/go
COPY --from=java /opt/polyllama/impls/java impls/java
COPY --from=zig /opt/polyllama/impls/zig impls/zig
COPY --from=mojo /opt/polyllama/impls/mojo impls/mojo
COPY --from=llamacpp /opt/polyllama/impls/llamacpp impls/llamacpp
CMD ["python", "-m", "invoke", "--list"]
