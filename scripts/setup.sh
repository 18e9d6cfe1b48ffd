#!/usr/bin/env bash
# Installs what herd needs on a Debian 12 build host and builds herd.
# Idempotent and quick when everything is already there. Used by ./run,
# ./test and .ci/run; nothing else needs to be installed by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(qemu-system-x86 qemu-utils ovmf systemd-boot-efi swtpm swtpm-tools
      squashfs-tools dosfstools mtools cryptsetup-bin busybox-static cpio
      fdisk gdisk e2fsprogs util-linux dnsmasq-base iproute2 libvirt-clients bc
      curl time docker-registry apache2-utils skopeo crun libxml2-utils python3-jsonschema
      tpm2-tools binutils sbsigntool openssl gcc libc6-dev etcd-server)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "==> installing Debian packages: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q >&2
  # Some machine images carry a backported qemu-utils that conflicts with
  # Debian 12's qemu-system-x86: pin qemu-utils to the archive's version.
  qv=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/{print $2}')
  args=()
  for p in "${missing[@]}"; do
    case "$p" in
      qemu-utils) ;;
      qemu-system-x86) args+=("$p" "qemu-utils=$qv") ;;
      *) args+=("$p") ;;
    esac
  done
  [[ " ${missing[*]} " == *" qemu-utils "* && " ${args[*]} " != *"qemu-utils="* ]] && args+=("qemu-utils=$qv")
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --allow-downgrades "${args[@]}" >&2
fi

echo "==> building herd (release)" >&2
cargo build --release -q -p herd >&2
echo "==> building the node binaries (static)" >&2
RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --release -q --target x86_64-unknown-linux-gnu -p herd-update -p herd-agent -p herd-provision >&2
# herd-init with the size profile (Cargo.toml, [profile.node-init]), next to
# the others, where `herd build` and the tests take the node binaries from.
RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --profile node-init -q --target x86_64-unknown-linux-gnu -p herd-init >&2
# (rm first: the old file may be cargo's hard link to its own release build.)
rm -f target/x86_64-unknown-linux-gnu/release/herd-init
cp target/x86_64-unknown-linux-gnu/node-init/herd-init target/x86_64-unknown-linux-gnu/release/herd-init
