# Build the outreach binary, then ship it on a slim Debian.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY migrations migrations
COPY config config
RUN cargo build --release --locked --bin outreach

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 outreach
COPY --from=build /src/target/release/outreach /usr/local/bin/outreach
USER outreach
EXPOSE 9464
ENTRYPOINT ["outreach"]
CMD ["worker"]
