# longhorn-guard: one image with two static executables: `longhorn-guard` (webhook, agent,
# certs, doctor, prune, crds subcommands; not the demo, see below) and `longhorn-guard-agent`
# (the agent alone, what the DaemonSet and the sidecar run: less code mapped on every node).
# Not built on the project's machines (no docker daemon there); checked by eye only.
# The binary is static musl, so the final image is distroless/static running as nonroot
# (65532); the agent DaemonSet overrides runAsUser to 0 (see manifests/base/agent-daemonset.yaml).
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl \
 && apt-get update && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# --no-default-features leaves out the `demo` subcommand, which links test support (the
# testkit, the fake engine): the image ships none of it.
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --no-default-features \
      -p longhorn-guard -p longhorn-guard-agent \
 && cp target/x86_64-unknown-linux-musl/release/longhorn-guard \
       target/x86_64-unknown-linux-musl/release/longhorn-guard-agent /

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /longhorn-guard /longhorn-guard-agent /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/longhorn-guard"]
