# syntax=docker/dockerfile:1
# runway-proxy: the sidecar binary in a small, non-root image.
#
# Build:  docker build -t runway-proxy .
# Run:    docker run --rm -p 8080:8080 -p 8081:8081 -v runway-proxy-data:/var/lib/runway-proxy runway-proxy
#
# The same image runs the CometAPI stand-in: docker run --rm runway-proxy mock-upstream --listen 0.0.0.0:8090

FROM rust:1.95-slim-bookworm AS build
WORKDIR /build
# The manifest names the benches and examples, so they come along; tests do not.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --profile dist --locked --bin runway-proxy \
    && cp target/dist/runway-proxy /runway-proxy \
    && mkdir /data

# glibc and libgcc, nothing else: no shell, no package manager. The health check is the
# binary's own `healthcheck` subcommand, since there is no curl.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /runway-proxy /usr/local/bin/runway-proxy
# The outbox, idempotency records and generated secrets: keep them on a volume, or a
# restart loses webhooks not yet delivered.
COPY --from=build --chown=65532:65532 /data /var/lib/runway-proxy
VOLUME ["/var/lib/runway-proxy"]
ENV RUNWAY_PROXY_LISTEN=0.0.0.0:8080 \
    RUNWAY_PROXY_WEBHOOK_LISTEN=0.0.0.0:8081 \
    RUNWAY_PROXY_DATA_DIR=/var/lib/runway-proxy \
    RUNWAY_PROXY_LOG_FORMAT=json
EXPOSE 8080 8081
USER 65532:65532
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/runway-proxy", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/runway-proxy"]
CMD ["serve"]
