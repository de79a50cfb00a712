#!/usr/bin/env bash
# Run the Argo CD health check tests (deploy/argocd/health_test.lua): the
# cases for both kinds, CommandInvocation and Command, a Lua 5.1 syntax check of
# deploy/argocd/health.lua, and a drift check of deploy/argocd/argocd-cm-snippet.yaml:
# each of its keys
#   resource.customizations.health.ssm.operator.dev_CommandInvocation
#   resource.customizations.health.ssm.operator.dev_Command
# must hold health.lua verbatim, and it must hold no other health key.
#
# Uses lua5.4 (Debian package lua5.4) unless $LUA names another interpreter;
# the tests also pass under lua5.1, the dialect of Argo CD's gopher-lua.
# The last line of output is "N passed, M failed"; exit status is non-zero
# when any case fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LUA="${LUA:-lua5.4}"

if ! command -v "${LUA}" >/dev/null 2>&1; then
  echo "test-argocd-health: ${LUA} not found; install it with: apt-get install -y lua5.4" >&2
  exit 2
fi

exec "${LUA}" "${ROOT}/deploy/argocd/health_test.lua"
