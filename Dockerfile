# Braid's images for people with Docker (the project itself builds them without Docker: `make
# images` packs the same binaries as OCI archives). One Dockerfile for the four images:
#
#   docker build --build-arg BINARY=braid-operator -t REGISTRY/braid-operator:TAG .
#   docker build --build-arg BINARY=braid-webhook  -t REGISTRY/braid-webhook:TAG .
#   docker build --build-arg BINARY=braid-proxy    -t REGISTRY/braid-proxy:TAG .
#   docker build --build-arg BINARY=braid-shop     -t REGISTRY/braid-shop:TAG .
#
# Then set the names in config/kustomization.yaml (`images:`) and the proxy's in the Mesh
# (`spec.proxy.image`). The pods' security contexts come from the manifests and the webhook, not
# from here. Not exercised by CI: the machines that run it have no Docker engine.
FROM rust:1.95-bookworm AS build
ARG BINARY=braid-operator
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin "${BINARY}" && cp "target/release/${BINARY}" /braid-binary

FROM debian:bookworm-slim
ARG BINARY=braid-operator
# braid-proxy's init step runs iptables-{legacy,nft}-{save,restore}.
RUN if [ "${BINARY}" = braid-proxy ]; then \
      apt-get update && apt-get install -y --no-install-recommends iptables && rm -rf /var/lib/apt/lists/*; \
    fi
COPY --from=build /braid-binary /usr/local/bin/${BINARY}
RUN ln -s "/usr/local/bin/${BINARY}" /usr/local/bin/braid-entrypoint
ENTRYPOINT ["/usr/local/bin/braid-entrypoint"]
