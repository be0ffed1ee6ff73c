# syntax=docker/dockerfile:1
# A small runtime image that runs as non-root:
#   docker build -t streamgate:0.1.0 .
#   docker run --rm -p 8080:8080 -v $PWD/config/example.toml:/etc/streamgate/streamgate.toml:ro streamgate:0.1.0

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p streamgate \
 && strip target/release/streamgate

# glibc and libgcc, no shell, no package manager; user 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/streamgate /usr/local/bin/streamgate
COPY config/example.toml /etc/streamgate/streamgate.toml
USER 65532:65532
EXPOSE 8080 9901 9100
ENTRYPOINT ["/usr/local/bin/streamgate"]
CMD ["run", "--config", "/etc/streamgate/streamgate.toml", "--log-format", "json"]
