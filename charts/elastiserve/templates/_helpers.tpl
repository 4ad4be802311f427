{{/*
Names, labels and small shared pieces. Every object gets the standard app.kubernetes.io/* labels
through "elastiserve.labels".
*/}}

{{/* The chart name (nameOverride wins). */}}
{{- define "elastiserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The object name prefix: fullnameOverride, else <release>-<name> (just <release> if it already holds the name). */}}
{{- define "elastiserve.fullname" -}}
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

{{/* <chart>-<version> for the helm.sh/chart label. */}}
{{- define "elastiserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select one component's pods: (dict "ctx" $ "component" "operator"). */}}
{{- define "elastiserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "elastiserve.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/* All standard labels: (dict "ctx" $ "component" "operator"); component may be empty. */}}
{{- define "elastiserve.labels" -}}
helm.sh/chart: {{ include "elastiserve.chart" .ctx }}
{{ include "elastiserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: elastiserve
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* <fullname>-<component>: (dict "ctx" $ "component" "operator"). */}}
{{- define "elastiserve.componentName" -}}
{{- printf "%s-%s" (include "elastiserve.fullname" .ctx) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "elastiserve.operator.fullname" -}}
{{- include "elastiserve.componentName" (dict "ctx" . "component" "operator") }}
{{- end }}

{{- define "elastiserve.activator.fullname" -}}
{{- include "elastiserve.componentName" (dict "ctx" . "component" "activator") }}
{{- end }}

{{- define "elastiserve.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "elastiserve.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "elastiserve.activator.serviceAccountName" -}}
{{- if .Values.activator.serviceAccount.create }}
{{- default (include "elastiserve.activator.fullname" .) .Values.activator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.activator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest. */}}
{{- define "elastiserve.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* True (non-empty) when the monitoring.coreos.com/v1 objects should be rendered. */}}
{{- define "elastiserve.monitoring.enabled" -}}
{{- if and .Values.monitoring.enabled (or .Values.monitoring.force (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) }}true{{ end }}
{{- end }}

{{/* Labels of the monitoring objects: standard labels plus monitoring.labels. */}}
{{- define "elastiserve.monitoring.labels" -}}
{{ include "elastiserve.labels" (dict "ctx" .ctx "component" .component) }}
{{- with .ctx.Values.monitoring.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Checks that templates cannot express in the JSON schema (cross-field rules). */}}
{{- define "elastiserve.validate" -}}
{{- if and .Values.rbac.namespaced (empty .Values.watchNamespaces) }}
{{- fail "rbac.namespaced=true needs watchNamespaces: list the namespaces the operator may manage (e.g. --set watchNamespaces={team-a,team-b})" }}
{{- end }}
{{- if and (gt (int .Values.operator.replicas) 1) (not .Values.operator.peering.enabled) }}
{{- fail (printf "operator.replicas=%d needs operator.peering.enabled=true: without kopf peering every replica would scale the same models" (int .Values.operator.replicas)) }}
{{- end }}
{{- if and .Values.tracing.enabled (empty .Values.tracing.endpoint) }}
{{- fail "tracing.enabled=true needs tracing.endpoint: the OTLP/HTTP address of a collector or Jaeger (e.g. --set tracing.endpoint=http://jaeger-collector.tracing:4318)" }}
{{- end }}
{{- end }}

{{/* The standard OpenTelemetry variables (tracing.*); empty when tracing is off. */}}
{{- define "elastiserve.tracingEnv" -}}
{{- if .Values.tracing.enabled }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.tracing.endpoint | quote }}
- name: OTEL_TRACES_SAMPLER
  value: parentbased_traceidratio
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .Values.tracing.samplingRatio | toString | quote }}
{{- end }}
{{- end }}

{{/*
RBAC rules. The operator's verbs are exactly what operator/*.py calls (kube.py applies with
server-side apply = patch, plus create for new objects; deletes pruned variants; reads Secrets for
Prometheus bearer tokens; kopf posts Events and patches status) and what kopf itself needs.
*/}}
{{- define "elastiserve.operator.namespacedRules" -}}
- apiGroups: ["elastiserve.dev"]
  resources: ["modeldeployments"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["elastiserve.dev"]
  resources: ["modeldeployments/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .Values.operator.peering.enabled }}
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end }}

{{/* Cluster-scoped reads kopf needs in every mode: resource discovery and namespaces (and cluster peering). */}}
{{- define "elastiserve.operator.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- if .Values.operator.peering.enabled }}
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end }}

{{/* The activator annotates a ModelDeployment to wake it and reads ready endpoints. */}}
{{- define "elastiserve.activator.rules" -}}
- apiGroups: ["elastiserve.dev"]
  resources: ["modeldeployments"]
  verbs: ["get", "patch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
{{- end }}
