#!/usr/bin/env bash
# Build the runtime image offline from registries (only PyPI and a Debian mirror are needed), as
# `make image` does; run from the repository root with a Docker engine running.
#
# 1. Base: nf-bulk2single-base:bookworm-<hash of containers/base.sh and BASE_CA>, bootstrapped
#    from Debian packages by containers/base.sh when the engine does not have it.
# 2. Image: built from a minimal context (requirements.txt + certs/ with SITE_CA, nothing else)
#    and tagged $IMAGE:$VERSION-<hash of Dockerfile, requirements.txt, base image id, certs,
#    version>; skipped when that tag exists. $IMAGE:$VERSION (process.container) then points at it.
#
# Knobs (environment): IMAGE, VERSION, DOCKER (client, default docker),
#   BASE_CA   PEM files trusted in the base, default the host's local CAs
#             (/usr/local/share/ca-certificates/*.crt: e.g. a TLS-inspecting proxy's CA);
#             BASE_CA= (empty) for a base with Debian's CA list only;
#   SITE_CA   PEM files trusted only while pip downloads (builder stage), not shipped.
set -euo pipefail

IMAGE=${IMAGE:-ghcr.io/nf-bulk2single/nf-bulk2single}
VERSION=${VERSION:?VERSION (manifest.version) is required}
DOCKER=${DOCKER:-docker}
NICE=${NICE:-nice -n 10}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
shopt -s nullglob
# shellcheck disable=SC2206
base_ca=(${BASE_CA-/usr/local/share/ca-certificates/*.crt})
# shellcheck disable=SC2206
site_ca=(${SITE_CA:-})
shopt -u nullglob

now() { date +%s; }
sha() { sha256sum | cut -c1-12; }
# content hash of files, in the order given (names do not matter, contents do)
files_hash() { for f in "$@"; do sha256sum <"$f"; done | sha; }

# The docker CLI must build with BuildKit: the buildx plugin when present, else a client with
# BuildKit built in (Debian's docker.io 20.10). A newer CLI without buildx cannot.
if "$DOCKER" buildx version >/dev/null 2>&1; then
    build=("$DOCKER" buildx build --load)
elif [[ $("$DOCKER" version -f '{{.Client.Version}}' 2>/dev/null) == 20.* ]]; then
    build=(env DOCKER_BUILDKIT=1 "$DOCKER" build)
elif [[ -x /usr/bin/docker && $DOCKER != /usr/bin/docker ]]; then
    DOCKER=/usr/bin/docker   # Debian's client (this machine: a static CLI without buildx comes first)
    build=(env DOCKER_BUILDKIT=1 "$DOCKER" build)
else
    echo "image.sh: $DOCKER cannot build with BuildKit: install the buildx plugin (or Debian's docker.io)" >&2
    exit 1
fi

# ---- base ----------------------------------------------------------------------------------------
base=nf-bulk2single-base:bookworm-$(files_hash "$here/base.sh" "${base_ca[@]}")
if "$DOCKER" image inspect "$base" >/dev/null 2>&1; then
    echo "[image] base $base present"
else
    if ! command -v debootstrap >/dev/null && [[ $(id -u) == 0 ]]; then
        t0=$(now)
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }
        echo "[image] debootstrap installed in $(( $(now) - t0 )) s"
    fi
    t0=$(now)
    DOCKER=$DOCKER $NICE "$here/base.sh" "$base" "${base_ca[@]}"
    echo "[image] base $base bootstrapped in $(( $(now) - t0 )) s"
fi
base_id=$("$DOCKER" image inspect -f '{{.Id}}' "$base")

# ---- minimal build context -----------------------------------------------------------------------
ctx=$(mktemp -d "${TMPDIR:-/tmp}/b2s-context.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
cp "$repo/requirements.txt" "$ctx/"
mkdir "$ctx/certs"
for ca in "${site_ca[@]}"; do
    n=$(basename "$ca"); cp "$ca" "$ctx/certs/${n%.*}.crt"
done

inputs=$({ sha256sum <"$here/Dockerfile"; sha256sum <"$repo/requirements.txt"; echo "$base_id"
           echo "$VERSION"; files_hash "${site_ca[@]}"; } | sha)
tag=$IMAGE:$VERSION-$inputs

if "$DOCKER" image inspect "$tag" >/dev/null 2>&1; then
    echo "[image] $tag present (same Dockerfile, requirements.txt, base and certs): build skipped"
else
    t0=$(now)
    echo "[image] building $tag from $base (context: $(du -sh "$ctx" | cut -f1))"
    $NICE "${build[@]}" -f "$here/Dockerfile" --build-arg "BASE_IMAGE=$base" --build-arg "VERSION=$VERSION" \
        --label "io.github.nf-bulk2single.inputs=$inputs" -t "$tag" "$ctx"
    echo "[image] built in $(( $(now) - t0 )) s"
fi
"$DOCKER" tag "$tag" "$IMAGE:$VERSION"
size=$("$DOCKER" image inspect -f '{{.Size}}' "$tag")
echo "[image] $IMAGE:$VERSION = $tag ($(awk -v s="$size" 'BEGIN{printf "%.2f GB", s/1e9}'))"
