#!/usr/bin/env bash
# The image's base, made from Debian packages alone: debootstrap (minbase) + `docker import`.
# Needs root, debootstrap and a reachable Debian mirror; no container registry.
#
#   containers/base.sh TAG [CA_CERT.crt ...]
#
# The base holds Debian bookworm's own Python 3.11 (python3, python3-venv), ca-certificates and
# procps (`ps`, for Nextflow's task metrics). CUDA is NOT here: it comes with the pinned torch
# wheels (nvidia-* wheels in requirements.txt); the GPU driver comes from the host.
# Every CA_CERT given (PEM, e.g. a site's TLS-inspection CA) is added to the base's trust store,
# so pip inside the image build, and any TLS client in the image, trusts it.
# Knobs: DEBIAN_MIRROR (default http://deb.debian.org/debian), DOCKER (default docker).
set -euo pipefail

tag=${1:?usage: containers/base.sh TAG [CA_CERT.crt ...]}
shift
SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates,procps
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKER=${DOCKER:-docker}

command -v debootstrap >/dev/null || {
    echo "containers/base.sh: debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/b2s-base.XXXXXX")
root=$work/rootfs
cleanup() {
    # debootstrap mounts /proc (and more) inside the target: unmount before deleting anything,
    # and never cross into another file system.
    grep -o " $root/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

echo "[base] debootstrap --variant=minbase $SUITE ($PACKAGES) from $MIRROR"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log" >&2; exit 1; }

for ca in "$@"; do
    name=$(basename "$ca"); name=${name%.*}
    install -m 0644 "$ca" "$root/usr/local/share/ca-certificates/$name.crt"
    echo "[base] trusted CA added: $ca"
done
chroot "$root" update-ca-certificates >/dev/null

# Nothing but the installed system: no package caches, lists or logs; no machine identity.
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/tmp/* \
       "$root"/var/tmp/* "$root"/root/.cache
: >"$root/etc/machine-id"

python=$(chroot "$root" dpkg-query -W -f='${Version}' python3.11)
debian=$(cat "$root/etc/debian_version")
echo "[base] Debian $debian, python3.11 $python; importing as $tag"
tar --numeric-owner --one-file-system -C "$root" -c . | "$DOCKER" import \
    -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' \
    -c "LABEL org.opencontainers.image.base.name=debian:$SUITE-debootstrap-minbase" \
    -c "LABEL io.github.nf-bulk2single.base.debian=$debian" \
    -c "LABEL io.github.nf-bulk2single.base.python3-11=$python" \
    -m "debootstrap --variant=minbase --include=$PACKAGES $SUITE $MIRROR" - "$tag" >/dev/null
