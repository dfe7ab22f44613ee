# polyllama for Linux parity: one stage per toolchain family builds its ports with the same
# manifests and build commands as a native build (`invoke build-all --ports ...` inside the
# stage); the final image holds the orchestrator and every port that built.
#
#   invoke build-all --docker                    full image, tagged polyllama:<git commit>
#   invoke build-all --docker --target slim      reduced image: Python reference + C
#
# BASE is a build argument so that hosts without registry access can use a local Debian image
# (scripts/podman-setup.sh makes one with debootstrap). Stages that need packages reach Debian's
# mirror and PyPI / crates.io / Maven Central, so build with host networking.
ARG BASE=debian:bookworm-slim

# ---------------------------------------------------------------- base: Python + orchestrator
FROM ${BASE} AS base
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH POLYLLAMA_IN_CONTAINER=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# a proxy's CA, when the build host has one (see docker/certs/README.md)
COPY docker/certs/ /opt/certs/
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates make gcc libc6-dev git \
    && rm -rf /var/lib/apt/lists/* \
    && if [ -s /opt/certs/host-ca.crt ]; then cat /opt/certs/host-ca.crt >> /etc/ssl/certs/ca-certificates.crt; fi \
    && python3 -m venv /opt/venv
WORKDIR /opt/polyllama
COPY pyproject.toml README.md tasks.py ./
COPY orchestrator orchestrator
COPY schemas schemas
RUN pip install -e .
COPY models/manifest.toml models/manifest.toml
COPY impls/python impls/python

# ---------------------------------------------------------------- C (gcc)
FROM base AS c
COPY impls/c impls/c
RUN python -m invoke build-all --ports c --strict

# ---------------------------------------------------------------- C++ (CMake, Ninja, GoogleTest)
FROM base AS cpp
RUN apt-get update && apt-get install -y --no-install-recommends g++ cmake ninja-build libgtest-dev \
    && rm -rf /var/lib/apt/lists/*
COPY impls/cpp impls/cpp
RUN python -m invoke build-all --ports cpp --strict

# ---------------------------------------------------------------- Rust (Debian's cargo)
# rustup's toolchains come from no package registry, so the image uses Debian's cargo (1.65),
# which reads Cargo.lock format 3 only: the lock is rewritten to that format, same versions.
FROM base AS rust
RUN apt-get update && apt-get install -y --no-install-recommends cargo && rm -rf /var/lib/apt/lists/*
COPY impls/rust impls/rust
RUN sed -i 's/^version = 4$/version = 3/' impls/rust/Cargo.lock \
    && python -m invoke build-all --ports rust --strict

# ---------------------------------------------------------------- Go (Debian's go)
FROM base AS go
RUN apt-get update && apt-get install -y --no-install-recommends golang-go && rm -rf /var/lib/apt/lists/*
COPY impls/go impls/go
RUN python -m invoke build-all --ports go --strict

# ---------------------------------------------------------------- Java (JDK 17, Maven)
FROM base AS java
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jdk-headless maven \
    && rm -rf /var/lib/apt/lists/*
COPY impls/java impls/java
RUN python -m invoke build-all --ports java --strict

# ---------------------------------------------------------------- toolchains from PyPI: Mojo, Zig
FROM base AS pypi
COPY impls/mojo impls/mojo
COPY impls/zig impls/zig
RUN python -m invoke install --ports mojo,zig && python -m invoke build-all --ports mojo,zig --strict

# ---------------------------------------------------------------- slim: the reference and C
FROM base AS slim
COPY --from=c /opt/polyllama/impls/c impls/c
CMD ["python", "-m", "invoke", "--list"]

# ---------------------------------------------------------------- full
FROM base AS full
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless libstdc++6 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=c /opt/polyllama/impls/c impls/c
COPY --from=cpp /opt/polyllama/impls/cpp impls/cpp
COPY --from=rust /opt/polyllama/impls/rust impls/rust
COPY --from=go /opt/polyllama/impls/go impls/go
COPY --from=java /opt/polyllama/impls/java impls/java
COPY --from=pypi /opt/venv /opt/venv
COPY --from=pypi /opt/polyllama/impls/mojo impls/mojo
COPY --from=pypi /opt/polyllama/impls/zig impls/zig
CMD ["python", "-m", "invoke", "--list"]
