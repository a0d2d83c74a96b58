{{/*
Names, labels and small shared snippets. Every object gets the standard
app.kubernetes.io labels; selectors use only name, instance and component so
they never change on upgrade.
*/}}

{{- define "prodgy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "prodgy.fullname" -}}
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

{{- define "prodgy.operator.fullname" -}}
{{- printf "%s-operator" (include "prodgy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "prodgy.api.fullname" -}}
{{- printf "%s-api" (include "prodgy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "prodgy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "prodgy.labels" -}}
helm.sh/chart: {{ include "prodgy.chart" . }}
app.kubernetes.io/name: {{ include "prodgy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: prodgy
{{- with .Values.global.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "prodgy.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "prodgy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "prodgy.api.selectorLabels" -}}
app.kubernetes.io/name: {{ include "prodgy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: api
{{- end }}

{{- define "prodgy.operator.labels" -}}
{{ include "prodgy.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "prodgy.api.labels" -}}
{{ include "prodgy.labels" . }}
app.kubernetes.io/component: api
{{- end }}

{{/* Service accounts: the operator's, and the API pod's (used by the proxy sidecar only). */}}
{{- define "prodgy.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "prodgy.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "prodgy.proxy.serviceAccountName" -}}
{{- if .Values.proxy.serviceAccount.create }}
{{- default (printf "%s-proxy" (include "prodgy.fullname" .) | trunc 63 | trimSuffix "-") .Values.proxy.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.proxy.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Namespace of hashed Secrets and UsageReports. */}}
{{- define "prodgy.tokensNamespace" -}}
{{- required "tokensNamespace.name is required" .Values.tokensNamespace.name }}
{{- end }}

{{/* Lease the operator replicas compete for. */}}
{{- define "prodgy.operator.leaseName" -}}
{{- default (include "prodgy.operator.fullname" .) .Values.operator.leaderElection.leaseName }}
{{- end }}

{{/*
Image reference: [registry/]repository[:tag][@digest]. Call with
(dict "image" .Values.x.image "root" $).
*/}}
{{- define "prodgy.image" -}}
{{- $registry := .root.Values.global.imageRegistry }}
{{- $repo := .image.repository }}
{{- if $registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" $registry) $repo }}{{ end }}
{{- $tag := default .root.Chart.AppVersion .image.tag }}
{{- if .image.digest }}
{{- printf "%s@%s" $repo .image.digest }}
{{- else }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}
{{- end }}

{{- define "prodgy.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The API keeps its data in SQLite unless a PostgreSQL URL is given. */}}
{{- define "prodgy.api.usesPostgres" -}}
{{- if .Values.api.database.existingSecret }}true{{ end }}
{{- end }}

{{- define "prodgy.api.encryptionKeySecret" -}}
{{- default (printf "%s-encryption-key" (include "prodgy.api.fullname" .)) .Values.api.encryptionKey.existingSecret }}
{{- end }}

{{/*
Checks that would otherwise surface as a crash-looping pod. Included once,
from the API Deployment.
*/}}
{{- define "prodgy.validate" -}}
{{- if and (gt (int .Values.api.replicaCount) 1) (not (include "prodgy.api.usesPostgres" .)) }}
{{- fail "api.replicaCount > 1 needs PostgreSQL: set api.database.existingSecret (SQLite on one volume serves one replica)" }}
{{- end }}
{{- if and (gt (int .Values.operator.replicaCount) 1) (not .Values.operator.leaderElection.enabled) }}
{{- fail "operator.replicaCount > 1 needs operator.leaderElection.enabled=true" }}
{{- end }}
{{- if eq .Values.tokensNamespace.name .Release.Namespace }}
{{- fail "tokensNamespace.name must differ from the release namespace: the proxy may read every Secret in it, so it must hold nothing but hashed Secrets" }}
{{- end }}
{{- end }}
