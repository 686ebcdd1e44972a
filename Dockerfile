# syntax=docker/dockerfile:1
# Build: docker build -t ecs-janitor .
# The runtime image holds only the binary, CA certificates and an unprivileged user, and runs with
# a read-only root filesystem (the SQLite default is not used there: point JANITOR_DATABASE_URL at
# PostgreSQL, or mount a writable volume for a SQLite file).

FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
    && for b in sim_describe policy_plan apply_fleet; do echo 'fn main() {}' > benches/$b.rs; done \
    && cargo build --release --locked && rm -rf src benches
COPY . .
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin ecs-janitor \
    && strip target/release/ecs-janitor

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin janitor
COPY --from=build /src/target/release/ecs-janitor /usr/local/bin/ecs-janitor
USER 10001:10001
WORKDIR /home/janitor
ENV JANITOR_POLICIES=/policies \
    JANITOR_LISTEN=0.0.0.0:9187 \
    JANITOR_LOG_FORMAT=json
EXPOSE 9187
HEALTHCHECK --interval=30s --timeout=3s CMD ["/usr/local/bin/ecs-janitor", "ready"]
ENTRYPOINT ["/usr/local/bin/ecs-janitor"]
CMD ["run"]
