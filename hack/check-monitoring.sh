#!/usr/bin/env bash
# Check the chart's monitoring: the PrometheusRule's alerts and the Grafana
# dashboard, with real Prometheus tools (promtool 2.42 from Debian, unpacked by
# hack/test-deps.sh into .cache/prometheus).
#
#   - render the PrometheusRule out of the chart (helm, default values,
#     namespace ssm-system) and `promtool check rules` it;
#   - the seven alerts of the contract are there, each with severity, summary,
#     description and a runbook_url whose anchor is a section of docs/runbook.md;
#   - `promtool test rules tests/monitoring/alerts.test.yaml`: every alert fires
#     on a bad series and stays quiet on good ones (the script checks that each
#     alert has a test expecting it to fire);
#   - the dashboard: its structure (hack/check-dashboard.py), every query parsed
#     by `promtool check rules`, and the ConfigMap the chart renders carries it
#     with the label grafana_dashboard: "1".
#
# promtool: $PROMTOOL, else .cache/prometheus/bin/promtool, else PATH.
# helm: $HELM, else $KUBEBUILDER_ASSETS/helm, else PATH.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="${ROOT}/charts/ssm-operator"
TESTS="${ROOT}/tests/monitoring/alerts.test.yaml"
RUNBOOK="${ROOT}/docs/runbook.md"
ALERTS=(SsmOperatorDown SsmOperatorNoLeader SsmOperatorSsmThrottled SsmOperatorStatusLagHigh
  SsmOperatorWatchFailing SsmOperatorResourcesStalled SsmOperatorPushQueueFailing)

say() { printf 'check-monitoring: %s\n' "$*"; }
die() { printf 'check-monitoring: FAIL: %s\n' "$*" >&2; exit 1; }

find_tool() { # find_tool NAME ENV_VALUE CANDIDATE...
  local name=$1 env=$2
  shift 2
  if [[ -n "${env}" ]]; then printf '%s\n' "${env}"; return; fi
  for c in "$@"; do
    if [[ -x "${c}" ]]; then printf '%s\n' "${c}"; return; fi
  done
  command -v "${name}" || die "${name} not found (run hack/test-deps.sh / hack/envtest-assets.sh)"
}
promtool="$(find_tool promtool "${PROMTOOL:-}" "${ROOT}/.cache/prometheus/bin/promtool")"
helm_bin="$(find_tool helm "${HELM:-}" "${KUBEBUILDER_ASSETS:-/nonexistent}/helm")"
say "$("${promtool}" --version 2>&1 | head -n 1) (${promtool})"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/check-monitoring.XXXXXX")"
trap 'rm -rf "${WORK}"' EXIT
export HELM_CONFIG_HOME="${WORK}/helm/config" HELM_CACHE_HOME="${WORK}/helm/cache" \
  HELM_DATA_HOME="${WORK}/helm/data"

# ---------------------------------------------------------------- alerts
"${helm_bin}" template ssm "${CHART}" --namespace ssm-system \
  --set monitoring.prometheusRule.enabled=true --show-only templates/prometheusrule.yaml \
  >"${WORK}/prometheusrule.yaml" || die "helm template of the PrometheusRule failed"
grep -q '^kind: PrometheusRule$' "${WORK}/prometheusrule.yaml" || die "no PrometheusRule rendered"
# The rule file Prometheus itself would load: the PrometheusRule's spec.
sed -n '/^spec:/,$p' "${WORK}/prometheusrule.yaml" | tail -n +2 | sed 's/^  //' >"${WORK}/rules.yaml"
"${promtool}" check rules "${WORK}/rules.yaml" || die "promtool check rules refused the chart's alerts"

[[ "$(grep -c '^ *- alert: ' "${WORK}/rules.yaml")" == "${#ALERTS[@]}" ]] ||
  die "expected exactly ${#ALERTS[@]} alerts: $(grep '^ *- alert: ' "${WORK}/rules.yaml" | tr -s ' ' | tr '\n' ' ')"
for alert in "${ALERTS[@]}"; do
  block="$(awk -v a="- alert: ${alert}" '$0 ~ a"$" {on=1; next} on && /- alert: / {exit} on' "${WORK}/rules.yaml")"
  [[ -n "${block}" ]] || die "${alert} missing from the PrometheusRule"
  for key in 'severity: (critical|warning)' 'summary: ' 'description: ' "runbook_url: docs/runbook.md#${alert,,}\$" 'for: '; do
    grep -Eq "${key}" <<<"${block}" || die "${alert} has no ${key}"
  done
  grep -Eqi "^## ${alert}\$" "${RUNBOOK}" || die "docs/runbook.md has no section '## ${alert}' for its runbook_url"
  # A test that expects it to fire: its alertname followed by a non-empty exp_alerts.
  awk -v a="alertname: ${alert}" '
    $0 ~ a"$" { seen = 1; next }
    seen && /exp_alerts: *$/ { getline; if ($0 ~ /exp_labels/) found = 1; seen = 0 }
    seen && /exp_alerts: *\[\]/ { seen = 0 }
    END { exit !found }' "${TESTS}" || die "tests/monitoring/alerts.test.yaml has no test in which ${alert} fires"
done
cp "${TESTS}" "${WORK}/alerts.test.yaml"
say "promtool test rules tests/monitoring/alerts.test.yaml"
(cd "${WORK}" && "${promtool}" test rules alerts.test.yaml) || die "alert unit tests failed"

# ---------------------------------------------------------------- dashboard
python3 "${ROOT}/hack/check-dashboard.py" "${CHART}/dashboards/ssm-operator.json" "${WORK}/dashboard-rules.yaml" ||
  die "the dashboard's structure"
"${promtool}" check rules "${WORK}/dashboard-rules.yaml" || die "a dashboard query does not parse"
"${helm_bin}" template ssm "${CHART}" --namespace ssm-system --set monitoring.dashboard.enabled=true \
  --show-only templates/dashboard.yaml >"${WORK}/dashboard.yaml" || die "helm template of the dashboard failed"
grep -q '^    grafana_dashboard: "1"$' "${WORK}/dashboard.yaml" || die "the dashboard ConfigMap lacks grafana_dashboard: \"1\""
# The ConfigMap carries the file unchanged (4 spaces of YAML indentation removed).
sed -n '/^  ssm-operator.json: |-$/,$p' "${WORK}/dashboard.yaml" | tail -n +2 | sed 's/^    //' >"${WORK}/carried.json"
diff -q <(python3 -m json.tool "${WORK}/carried.json") <(python3 -m json.tool "${CHART}/dashboards/ssm-operator.json") >/dev/null ||
  die "the ConfigMap's ssm-operator.json differs from charts/ssm-operator/dashboards/ssm-operator.json"
if "${helm_bin}" template ssm "${CHART}" >/dev/null 2>&1 --set monitoring.prometheusRule.throttledRatio=lots; then
  die "the schema accepted a throttledRatio that is not a number"
fi
say "OK: ${#ALERTS[@]} alerts checked and unit-tested; dashboard structure and $(grep -c 'record:' "${WORK}/dashboard-rules.yaml") queries parse"
