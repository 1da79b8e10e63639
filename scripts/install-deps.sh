#!/usr/bin/env bash
# Installs what building and testing the gateway needs on Debian 12, as root. Idempotent and
# quick when everything is there already: each step checks before it installs.
set -euo pipefail

packages=(
    # bpf-linker links the eBPF object against LLVM 22 (see ../shared/DESIGN.md).
    llvm-22-dev libpolly-22-dev libzstd-dev clang-22
    # Tests: inspect attached programs, addresses, the unit file, a real HTTP client.
    bpftool iproute2 systemd curl python3
    # PostgreSQL tests: a real server (initdb, postgres), psql and pgbench.
    postgresql postgresql-client postgresql-contrib
    # A Python driver as agents use it (tests/postgres_clients.rs runs /usr/bin/python3).
    python3-psycopg2
    # bench/pgbench.sh compares the gateway with pgbouncer; openssl makes test certificates.
    pgbouncer openssl
    # pg_query (PostgreSQL's own parser, libpg_query) generates its protobuf types with protoc.
    protobuf-compiler
    # SSH tests: a real sshd and the OpenSSH clients (ssh, scp, sftp, ssh-keygen), rsync,
    # asciinema to play exported recordings, and script(1) (util-linux) to give it a terminal;
    # xauth, which sshd and ssh run for X11 forwarding (tests/ssh_forward.rs).
    openssh-server openssh-client rsync asciinema util-linux xauth
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "install-deps: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# aya-build compiles gateway-ebpf with nightly for bpfel-unknown-none, which needs rust-src.
# (The verified recipe: the machines carry a nightly toolchain; only rust-src is added.)
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
    if rustup toolchain list | grep -q '^nightly'; then
        rustup component add rust-src --toolchain nightly
    else
        rustup toolchain install nightly --profile minimal --component rust-src,clippy
    fi
fi

# `cargo xtask test` lints gateway-ebpf with that nightly's clippy.
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^clippy'; then
    rustup component add clippy --toolchain nightly
fi

if ! command -v bpf-linker >/dev/null 2>&1; then
    LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker \
        --no-default-features --features llvm-22
fi

# Pinned programs live on bpffs; some hosts do not mount it by default.
if ! mountpoint -q /sys/fs/bpf; then
    mount -t bpf bpf /sys/fs/bpf
fi
