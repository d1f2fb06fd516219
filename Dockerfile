# The `rhone` image of docker-compose.yml: one binary, every role (`rhone serve api|worker|
# edge|runner`), configured by RHONE_* variables (`rhone serve --help`).
#
#   docker build -t rhone:latest .
#
# The runtime image carries what the roles call: git (the worker clones sources), crun
# (builds and apps run in its sandboxes), iproute2 and iptables (the runner's allocation
# network), and python3, the toolchain of examples/counter. A build command runs with the
# image's /usr read-only inside its sandbox: add the toolchains your apps build with (Go
# for Vango apps) in an image of your own `FROM rhone:latest`.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p rhone-cli \
    && install -m 0755 target/release/rhone /usr/local/bin/rhone

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates git crun iproute2 iptables python3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/rhone /usr/local/bin/rhone
CMD ["rhone", "--help"]
