#!/usr/bin/env bash
# Container images for the real worker node, built without a Docker engine (buildah, vfs storage)
# into OCI archives that `ctr -n k8s.io images import` loads. See docs/local-cluster.md.
#
# Usage: hack/image.sh build|pause|base|ref|archive
#   build     the project's image from the repository's Dockerfile, on the local Debian base
#   pause     the pod sandbox ("pause") image, compiled with gcc -static from the Kubernetes sources
#   base      the local Debian base image (debootstrap bookworm + python3.11)
#   ref       print the project image's reference for the current sources (localhost/elastiserve:<hash>)
#   archive   print the project image's OCI archive path for the current sources
#
# Everything is cached under ${ELASTISERVE_CACHE}/images, keyed by the content hash of its inputs:
# a second `build` with unchanged sources is a no-op; changing any file of the build context (the
# repository filtered by .dockerignore), the Dockerfile or the base builds again.
set -euo pipefail

# shellcheck source=hack/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

IMAGE_ROOT="${ELASTISERVE_CACHE}/images"
# buildah's own storage (vfs: no overlay mounts to clean up), never the host-wide default
BUILDAH=(buildah --root "${IMAGE_ROOT}/storage" --runroot "${IMAGE_ROOT}/run" --storage-driver vfs)
# created timestamps (and so image ids) do not depend on the build time
EPOCH=0

DEBIAN_SUITE="${ELASTISERVE_BASE_SUITE:-bookworm}"
DEBIAN_MIRROR="${ELASTISERVE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# python3 (3.11 on bookworm) with venv/ensurepip; passwd (groupadd/useradd) is part of minbase
BASE_PACKAGES="python3,python3-venv,ca-certificates"
HOST_CA_BUNDLE="${ELASTISERVE_HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

ilog() { printf '[image] %s\n' "$*" >&2; }

sha_of_string() { printf '%s' "$1" | sha256sum | cut -c1-16; }

base_key() { sha_of_string "debootstrap minbase ${DEBIAN_SUITE} ${DEBIAN_MIRROR} ${BASE_PACKAGES} v1"; }
base_ref() { printf 'localhost/elastiserve-base:%s-%s' "${DEBIAN_SUITE}" "$(base_key)"; }
base_stamp() { printf '%s/base-%s.built' "${IMAGE_ROOT}" "$(base_key)"; }

need_root_tools() {
  [[ "$(id -u)" -eq 0 ]] || die "building images needs root (debootstrap, buildah with vfs storage)"
  local t
  for t in "$@"; do
    command -v "${t}" >/dev/null 2>&1 || die "'${t}' is missing: run hack/install-node-deps.sh"
  done
}

# ---------------------------------------------------------------- base: debootstrap

cmd_base() {
  need_root_tools debootstrap buildah
  mkdir -p "${IMAGE_ROOT}" "${LOG_ROOT}"
  if [[ -f "$(base_stamp)" ]] && "${BUILDAH[@]}" inspect --type image "$(base_ref)" >/dev/null 2>&1; then
    ilog "base $(base_ref): cached"
    return 0
  fi
  local start rootfs logf ctr
  start=$(now_s)
  rootfs="${IMAGE_ROOT}/base-rootfs"
  logf="${LOG_ROOT}/image-base-$(base_key).log"
  ilog "debootstrap ${DEBIAN_SUITE} (minbase + ${BASE_PACKAGES}) from ${DEBIAN_MIRROR} (log: ${logf})"
  rm -rf "${rootfs}"
  nice -n 10 debootstrap --variant=minbase --include="${BASE_PACKAGES}" "${DEBIAN_SUITE}" "${rootfs}" "${DEBIAN_MIRROR}" \
    >"${logf}" 2>&1 || { tail -n 20 "${logf}" >&2; die "debootstrap failed; log: ${logf}"; }
  # what an image does not need: package lists and caches, logs, docs
  rm -rf "${rootfs}"/var/lib/apt/lists/* "${rootfs}"/var/cache/apt/*.bin "${rootfs}"/var/cache/apt/archives/*.deb \
    "${rootfs}"/var/log/* "${rootfs}"/usr/share/doc/* "${rootfs}"/usr/share/man/* "${rootfs}"/usr/share/info/*
  # the same executable names as the python:3.11-slim images
  ln -sf python3 "${rootfs}/usr/bin/python"
  ctr=$("${BUILDAH[@]}" from scratch)
  tar -C "${rootfs}" --numeric-owner -cf "${IMAGE_ROOT}/base-rootfs.tar" .
  "${BUILDAH[@]}" add "${ctr}" "${IMAGE_ROOT}/base-rootfs.tar" / >>"${logf}" 2>&1
  "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd /bin/bash "${ctr}"
  "${BUILDAH[@]}" commit --quiet --timestamp "${EPOCH}" "${ctr}" "$(base_ref)" >>"${logf}"
  "${BUILDAH[@]}" rm "${ctr}" >/dev/null
  rm -rf "${rootfs}" "${IMAGE_ROOT}/base-rootfs.tar"
  touch "$(base_stamp)"
  ilog "base $(base_ref) built in $(fmt_duration $(($(now_s) - start)))"
}

# ---------------------------------------------------------------- the project's image

# The build context as `docker build` would send it: the folders and files .dockerignore lets back
# in after its leading `*`, minus bytecode and model files. Copied to $1, so what is hashed is what
# is built.
stage_context() {
  local dest=$1 line
  rm -rf "${dest}"
  mkdir -p "${dest}"
  while IFS= read -r line; do
    line=${line%%#*}
    line=${line//[[:space:]]/}
    [[ "${line}" == '!'* ]] || continue
    line=${line#!}
    line=${line%/}
    [[ -e "${REPO_ROOT}/${line}" ]] || die ".dockerignore lets in '${line}', which does not exist"
    cp -a "${REPO_ROOT}/${line}" "${dest}/"
  done <"${REPO_ROOT}/.dockerignore"
  find "${dest}" \( -name __pycache__ -o -name '*.pyc' -o -name '*.onnx' \) -prune -exec rm -rf {} +
  cp "${REPO_ROOT}/Dockerfile" "${REPO_ROOT}/.dockerignore" "${dest}/"
}

context_hash() {
  local dir=$1
  (cd "${dir}" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) |
    { cat; printf 'base %s\n' "$(base_ref)"; } | sha256sum | cut -c1-16
}

project_key() {
  local stage="${IMAGE_ROOT}/context"
  stage_context "${stage}"
  context_hash "${stage}"
}

project_ref() { printf 'localhost/elastiserve:%s' "$1"; }
project_archive() { printf '%s/elastiserve-%s.oci.tar' "${IMAGE_ROOT}" "$1"; }

cmd_build() {
  need_root_tools debootstrap buildah
  cmd_base
  local key ref archive start logf
  key=$(project_key)
  ref=$(project_ref "${key}")
  archive=$(project_archive "${key}")
  if [[ -f "${archive}" ]]; then
    ilog "${ref}: cached (${archive})"
    printf '%s\n' "${archive}"
    return 0
  fi
  start=$(now_s)
  logf="${LOG_ROOT}/image-elastiserve-${key}.log"
  ilog "building ${ref} from the Dockerfile on $(base_ref) (log: ${logf})"
  # pip in the build trusts what the host trusts (a TLS-inspecting proxy's CA, for one): the host's
  # CA bundle and a pip.conf naming it are bind-mounted for the build only, never part of a layer.
  local trust=()
  if [[ -f "${HOST_CA_BUNDLE}" ]]; then
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"${IMAGE_ROOT}/pip.conf"
    trust=(--volume "${HOST_CA_BUNDLE}:/etc/ssl/certs/ca-certificates.crt:ro"
      --volume "${IMAGE_ROOT}/pip.conf:/etc/pip.conf:ro")
  fi
  # chroot isolation and the host network: the build's RUN steps need PyPI, and runc inside this VM
  # would need the oom_score_adj workaround (docs/local-cluster.md); the result is the same image.
  if ! nice -n 10 "${BUILDAH[@]}" bud --pull=never --isolation chroot --network host --layers=false \
    --timestamp "${EPOCH}" --build-arg "PYTHON_IMAGE=$(base_ref)" "${trust[@]}" \
    --build-arg "REVISION=$(git -C "${REPO_ROOT}" rev-parse HEAD 2>/dev/null || echo unknown)" \
    -t "${ref}" -f "${IMAGE_ROOT}/context/Dockerfile" "${IMAGE_ROOT}/context" >"${logf}" 2>&1; then
    tail -n 30 "${logf}" >&2
    die "image build failed; log: ${logf}"
  fi
  "${BUILDAH[@]}" push --quiet "${ref}" "oci-archive:${archive}.tmp:${ref}" >>"${logf}" 2>&1 ||
    die "buildah push to an OCI archive failed; log: ${logf}"
  mv "${archive}.tmp" "${archive}"
  # the archive is the cache: free buildah's (vfs, uncompressed) copy of the image
  "${BUILDAH[@]}" rmi "${ref}" >/dev/null 2>&1 || true
  # keep the newest 3 archives
  find "${IMAGE_ROOT}" -maxdepth 1 -name 'elastiserve-*.oci.tar' -printf '%T@ %p\n' | sort -rn | tail -n +4 |
    cut -d' ' -f2- | xargs -r rm -f
  local secs=$(($(now_s) - start))
  printf 'image\t%s\t%s\t%s\n' "${key}" "${secs}" "$(stat -c %s "${archive}")" >>"${LOG_ROOT}/build-times.tsv"
  ilog "${ref} built in $(fmt_duration "${secs}"): archive $(du -h "${archive}" | cut -f1)"
  printf '%s\n' "${archive}"
}

# ---------------------------------------------------------------- pause

pause_archive() { printf '%s/pause-%s.oci.tar' "${IMAGE_ROOT}" "${KUBERNETES_VERSION}"; }

cmd_pause() {
  need_root_tools gcc buildah
  local archive src ctr work
  archive=$(pause_archive)
  if [[ -f "${archive}" ]]; then
    printf '%s\n' "${archive}"
    return 0
  fi
  src="${ES_GOMODCACHE}/k8s.io/kubernetes@${KUBERNETES_VERSION}/build/pause/linux/pause.c"
  [[ -f "${src}" ]] || die "${src} not found: run 'hack/cluster.sh build' first (it downloads k8s.io/kubernetes)"
  mkdir -p "${IMAGE_ROOT}"
  work=$(mktemp -d)
  gcc -Os -static -Wall -Werror -DVERSION="\"${KUBERNETES_VERSION}-elastiserve\"" -o "${work}/pause" "${src}"
  strip "${work}/pause"
  ctr=$("${BUILDAH[@]}" from scratch)
  "${BUILDAH[@]}" copy "${ctr}" "${work}/pause" /pause >/dev/null
  "${BUILDAH[@]}" config --entrypoint '["/pause"]' --user 65535:65535 "${ctr}"
  "${BUILDAH[@]}" commit --quiet --timestamp "${EPOCH}" "${ctr}" "${PAUSE_REF}" >/dev/null
  "${BUILDAH[@]}" rm "${ctr}" >/dev/null
  "${BUILDAH[@]}" push --quiet "${PAUSE_REF}" "oci-archive:${archive}.tmp:${PAUSE_REF}" >/dev/null
  mv "${archive}.tmp" "${archive}"
  rm -rf "${work}"
  ilog "pause image ${PAUSE_REF}: ${archive}"
  printf '%s\n' "${archive}"
}

main() {
  case "${1:-}" in
    build) cmd_build ;;
    pause) cmd_pause ;;
    base) cmd_base ;;
    ref) project_ref "$(project_key)"; echo ;;
    archive) project_archive "$(project_key)"; echo ;;
    *)
      sed -n '5,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
      die "unknown command '${1:-}' (expected build|pause|base|ref|archive)"
      ;;
  esac
}

main "$@"
