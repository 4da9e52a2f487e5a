#!/usr/bin/env bash
# Runs every test of the project. Installs what the tests need when it is
# missing, so a fresh machine (and CI) passes too:
#   - etcd (Debian's etcd-server, etcd-client): the etcd backend's tests, and
#     the API scenario on etcd in .ci/run
#   - protoc (Debian's protobuf-compiler): building the etcd client
#   - ip (iproute2), nft (nftables), nsenter (util-linux): the pod network's
#     and the node agent's tests; the container tests need root, overlayfs
#     and cgroups, and build their images with shared/acceptance/images/build.sh
#     (which installs busybox-static, umoci, skopeo and docker-registry)
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ] || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || missing+=(nftables)
command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if ((${#missing[@]})); then
  echo "test.sh: installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
