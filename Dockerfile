# syntax=docker/dockerfile:1.7
# The outreach worker image: a release build, stripped, on a slim Debian,
# running as an unprivileged user.
#
#   DOCKER_BUILDKIT=1 docker build --build-arg OUTREACH_COMMIT=$(git rev-parse --short HEAD) -t outreach .
#
# Dependencies: BuildKit cache mounts keep cargo's registry and target/
# between builds, so a change to src/ recompiles only this crate (the
# dependency build, ~7 minutes on 2 cores, happens once per cache).
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Shown by `outreach_build_info{commit=…}`.
ARG OUTREACH_COMMIT=unknown
ENV OUTREACH_COMMIT=${OUTREACH_COMMIT} \
    CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=symbols
COPY Cargo.toml Cargo.lock ./
COPY benches benches
COPY migrations migrations
COPY config config
COPY src src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin outreach \
    && cp target/release/outreach /usr/local/bin/outreach

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 outreach
COPY --from=build /usr/local/bin/outreach /usr/local/bin/outreach
# Inside a container the HTTP endpoints must be reachable from outside it
# (Prometheus, the orchestrator's probes); logs are JSON lines for the
# log collector (`auto` would pick JSON too: stderr is not a terminal).
ENV OUTREACH__HTTP__BIND=0.0.0.0:9464 \
    OUTREACH__TELEMETRY__FORMAT=json
USER outreach
EXPOSE 9464
# The binary asks its own /readyz (broker consuming, database answering):
# the slim image has no curl or wget.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["outreach", "health"]
ENTRYPOINT ["outreach"]
CMD ["worker"]
