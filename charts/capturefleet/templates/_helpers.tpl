{{/* Chart name. */}}
{{- define "capturefleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart, unless the release name already contains the chart name. */}}
{{- define "capturefleet.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Common labels. */}}
{{- define "capturefleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "capturefleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: capturefleet
{{- end -}}

{{/* Selector labels of the operator Pods. */}}
{{- define "capturefleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "capturefleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "capturefleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "capturefleet.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "capturefleet.leaseName" -}}
{{- default (include "capturefleet.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{/* Name of the metrics Service; the operator's Prometheus `job` label. */}}
{{- define "capturefleet.metricsServiceName" -}}
{{- printf "%s-metrics" (include "capturefleet.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "capturefleet.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
The operator's rules on namespaced objects, derived from src/operator/ (each verb is one the
operator sends; tests/chart.rs checks the set against the requests it makes):
- the three custom resources: list/watch (shared caches), status written by server-side
  apply (patch), and capturedevices patched for the drain finalizer (server-side apply);
- Pods (label-selected watch): create device Pods and warm spares, patch (JSON patch to claim
  a spare and refresh the agent configuration; merge patch of activeDeadlineSeconds to drain),
  delete (repair, spares, offboarding);
- PersistentVolumeClaims (metadata-only watch): get (fresh read when a spare is claimed),
  server-side apply (create+patch), delete (volume policy Delete, surplus spares);
- PodDisruptionBudgets per pool: get, server-side apply (create+patch);
- events.k8s.io Events (kube-rs Recorder): create, patch.
No Secrets: they are only referenced by name in Pod specs, and the kubelet mounts them.
*/}}
{{- define "capturefleet.namespacedRules" -}}
- apiGroups: [capturefleet.dev]
  resources: [capturedevices]
  verbs: [list, watch, patch]
- apiGroups: [capturefleet.dev]
  resources: [devicepools, archivesinks]
  verbs: [list, watch]
- apiGroups: [capturefleet.dev]
  resources: [capturedevices/status, devicepools/status, archivesinks/status]
  verbs: [patch]
{{- if .Values.rbac.ownerReferencesPermissionEnforcement }}
- apiGroups: [capturefleet.dev]
  resources: [capturedevices/finalizers, devicepools/finalizers]
  verbs: [update]
{{- end }}
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/* Cluster-scoped and read-only: Mac hosts (metadata-only watch) for sticky placement. */}}
{{- define "capturefleet.clusterRules" -}}
- apiGroups: [""]
  resources: [nodes]
  verbs: [list, watch]
{{- end -}}
