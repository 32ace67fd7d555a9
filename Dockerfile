# For a machine that reaches a registry (rust and debian base images). Offline, and for
# docker-compose.yml, use scripts/images instead: it makes edgefleet-gateway:local and
# edgefleet-agent:local from binaries built here, with no base image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins

FROM debian:bookworm-slim
COPY --from=build /src/target/release/edgefleet /src/target/release/edgefleet-agent /usr/local/bin/
ENTRYPOINT ["edgefleet"]
