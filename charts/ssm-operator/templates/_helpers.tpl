{{/*
Chart name, shortened to the 63 characters a label value may hold.
*/}}
{{- define "ssm-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name used as the prefix of every object: "<release>-<chart>", or just the
release name when it already contains the chart name.
*/}}
{{- define "ssm-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
"name-version" for the helm.sh/chart label.
*/}}
{{- define "ssm-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select the operator pods. Never change these in an upgrade:
a Deployment's selector is immutable.
*/}}
{{- define "ssm-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ssm-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels put on every object.
*/}}
{{- define "ssm-operator.labels" -}}
helm.sh/chart: {{ include "ssm-operator.chart" . }}
{{ include "ssm-operator.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: ssm-operator
{{- end }}

{{/*
Name of the ServiceAccount the pods run as.
*/}}
{{- define "ssm-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ssm-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Container image reference: repository@digest when a digest is given, else
repository:tag (tag defaulting to the chart's appVersion).
*/}}
{{- define "ssm-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}
{{- end }}

{{/*
Value of --http-bind: "<address>:<port>", with an IPv6 address in brackets.
*/}}
{{- define "ssm-operator.httpBind" -}}
{{- $addr := toString .Values.config.httpBindAddress }}
{{- if and (contains ":" $addr) (not (hasPrefix "[" $addr)) }}
{{- printf "[%s]:%d" $addr (int .Values.config.httpPort) }}
{{- else }}
{{- printf "%s:%d" $addr (int .Values.config.httpPort) }}
{{- end }}
{{- end }}

{{/*
RBAC rules the controller needs wherever it watches CommandInvocations and
Commands: read the resources, server-side-apply their status, record Events
(events.k8s.io/v1; later Events of a series are patched). Commands are read,
their status written and their ssm.operator.dev/cancel finalizer removed even
with sendCommands off, so that they can report SendingDisabled and a Command
sent while sending was on can still be deleted (its run cancelled). With
sendCommands on: create/delete the child CommandInvocations.
*/}}
{{- define "ssm-operator.controllerRules" -}}
- apiGroups: ["ssm.operator.dev"]
  resources: ["commandinvocations"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["ssm.operator.dev"]
  resources: ["commandinvocations/status"]
  verbs: ["patch"]
- apiGroups: ["ssm.operator.dev"]
  resources: ["commands"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["ssm.operator.dev"]
  resources: ["commands/status"]
  verbs: ["patch", "update"]
- apiGroups: ["ssm.operator.dev"]
  resources: ["commands"]
  verbs: ["patch", "update"]
- apiGroups: ["ssm.operator.dev"]
  resources: ["commands/finalizers"]
  verbs: ["update"]
# Finished resources whose TTL ran out (spec.ttlSecondsAfterFinished,
# config.ttlAfterFinished) are deleted by the operator, with a uid precondition.
- apiGroups: ["ssm.operator.dev"]
  resources: ["commandinvocations", "commands"]
  verbs: ["delete"]
{{- if .Values.sendCommands.enabled }}
- apiGroups: ["ssm.operator.dev"]
  resources: ["commandinvocations"]
  verbs: ["create"]
{{- end }}
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
PromQL label matchers selecting this release's operator series in the alert
expressions: monitoring.selector, else the job and namespace labels the chart's
ServiceMonitor gives them (jobLabel app.kubernetes.io/name).
*/}}
{{- define "ssm-operator.monitoringSelector" -}}
{{- if .Values.monitoring.selector }}
{{- .Values.monitoring.selector }}
{{- else }}
{{- printf "job=\"%s\",namespace=\"%s\"" (include "ssm-operator.name" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
runbook_url of alert NAME: monitoring.runbookUrl (or docs/runbook.md) and the
alert's section anchor. Call with (list . "SsmOperatorDown").
*/}}
{{- define "ssm-operator.runbookUrl" -}}
{{- $root := index . 0 }}
{{- printf "%s#%s" (default "docs/runbook.md" $root.Values.monitoring.runbookUrl) (lower (index . 1)) }}
{{- end }}
