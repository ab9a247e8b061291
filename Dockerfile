# vedgate: multi-stage build; the runtime image holds the binary, the route
# files and the schemas, and runs as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends cmake libssl-dev pkg-config && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
COPY src src
RUN cargo build --release --locked --bin vedgate

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /nonexistent --shell /usr/sbin/nologin vedgate
COPY --from=build /src/target/release/vedgate /usr/local/bin/vedgate
COPY gateway.toml /etc/vedgate/gateway.toml
COPY routes /etc/vedgate/routes
COPY schemas /etc/vedgate/schemas
USER 10001:10001
WORKDIR /etc/vedgate
# Admin endpoints: /healthz /readyz /metrics /routes (bind all interfaces inside the pod network).
ENV VEDGATE_ADMIN_ADDR=0.0.0.0:9898
EXPOSE 9898
ENTRYPOINT ["/usr/local/bin/vedgate"]
CMD ["run", "--config", "/etc/vedgate/gateway.toml", "--routes", "/etc/vedgate/routes", "--log-format", "json"]
