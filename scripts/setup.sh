#!/usr/bin/env bash
# Install everything moonwall needs to build, idempotently: Debian packages for
# building the Lua guest to wasm, and the crates (fetched, not built).
# Safe to run again and again; it only installs what is missing.
set -euo pipefail

# clang-22 and lld-22 compile and link Lua to wasm32; the wasm32 compiler
# runtime and wasi-libc are its C library.
packages=(clang-22 lld-22 libclang-rt-22-dev-wasm32 wasi-libc)
# redis-server: the tests of shared dicts' Redis backend start one of their own.
packages+=(redis-server)

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "error: run as root, or install sudo, to install ${missing[*]}" >&2; exit 1; }
    sudo=sudo
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "error: cargo not found: install Rust 1.95 with rustup (\`rustup toolchain install 1.95\`) and put ~/.cargo/bin on PATH" >&2
  exit 1
fi
rust_version=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n1.95.0\n' "$rust_version" | sort -V | head -1)" != "1.95.0" ]; then
  echo "error: Rust $rust_version is too old: moonwall needs 1.95 (\`rustup toolchain install 1.95\`)" >&2
  exit 1
fi

# Fetch the crates, the pinned Lua sources among them, once.
cargo fetch --locked --quiet
