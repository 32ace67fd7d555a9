# Builds the edgefleet and edgefleet-agent binaries into a small Debian image.
# Needs the rust and debian base images from a registry (not available on offline CI hosts).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins

FROM debian:bookworm-slim
COPY --from=build /src/target/release/edgefleet /src/target/release/edgefleet-agent /usr/local/bin/
ENTRYPOINT ["edgefleet"]
