{{/*
Names, labels and the few values that several templates compute the same way.
Every object carries the Kubernetes recommended labels; selectors use only the stable ones
(name, instance, component), so that an upgrade never changes a Deployment's selector.
*/}}

{{- define "maxine.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "maxine.fullname" -}}
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

{{/* A name for one part of the release: "<fullname>-<suffix>", kept within 63 characters. */}}
{{- define "maxine.partName" -}}
{{- $root := index . 0 }}
{{- $suffix := index . 1 }}
{{- printf "%s-%s" (include "maxine.fullname" $root | trunc (int (sub 62 (len $suffix)))) $suffix | trimSuffix "-" }}
{{- end }}

{{- define "maxine.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component: (list $ "registry"). */}}
{{- define "maxine.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "maxine.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Every label of one component: (list $ "registry"). */}}
{{- define "maxine.labels" -}}
{{- $root := index . 0 -}}
{{ include "maxine.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Values.image.tag | default $root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: maxine
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
helm.sh/chart: {{ include "maxine.chart" $root }}
{{- end }}

{{- define "maxine.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "maxine.sidecarImage" -}}
{{- $image := .Values.webhook.sidecar.image }}
{{- if $image.repository }}
{{- printf "%s:%s" $image.repository ($image.tag | default .Chart.AppVersion) }}
{{- else }}
{{- include "maxine.image" . }}
{{- end }}
{{- end }}

{{/* The registry's address inside the cluster, by its Service's DNS name. */}}
{{- define "maxine.registryUrl" -}}
{{- printf "http://%s.%s.svc:%d" (include "maxine.fullname" .) .Release.Namespace (int .Values.service.port) }}
{{- end }}

{{- define "maxine.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "maxine.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "maxine.operatorServiceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "maxine.partName" (list . "operator")) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The chart's own Secret, holding whatever secret values were given in values. */}}
{{- define "maxine.secretName" -}}
{{- include "maxine.partName" (list . "secrets") }}
{{- end }}

{{- define "maxine.authSecretName" -}}
{{- .Values.auth.existingSecret | default (include "maxine.secretName" .) }}
{{- end }}

{{/* Redis values: does the registry read these from a Secret, and is the Redis the chart's own? "true" or "". */}}
{{- define "maxine.redisPasswordSet" -}}
{{- if and .Values.redis.enabled (or .Values.redis.password .Values.redis.existingSecret) }}true{{ end }}
{{- end }}

{{- define "maxine.redisUrlSet" -}}
{{- if and .Values.redis.enabled (or .Values.redis.external.url .Values.redis.external.existingSecret) }}true{{ end }}
{{- end }}

{{- define "maxine.bundledRedis" -}}
{{- if and .Values.redis.enabled (not (include "maxine.redisUrlSet" .)) }}true{{ end }}
{{- end }}

{{- define "maxine.redisPasswordSecretName" -}}
{{- .Values.redis.existingSecret | default (include "maxine.secretName" .) }}
{{- end }}

{{- define "maxine.redisUrlSecretName" -}}
{{- .Values.redis.external.existingSecret | default (include "maxine.secretName" .) }}
{{- end }}

{{/* Does the chart render a Secret of its own (secret values given in values)? "true" or "". */}}
{{- define "maxine.ownSecret" -}}
{{- $auth := and .Values.auth.enabled (not .Values.auth.existingSecret) }}
{{- $password := and .Values.redis.enabled .Values.redis.password (not .Values.redis.existingSecret) }}
{{- $url := and .Values.redis.enabled .Values.redis.external.url (not .Values.redis.external.existingSecret) }}
{{- if or $auth $password $url }}true{{ end }}
{{- end }}

{{- define "maxine.webhookServiceName" -}}
{{- include "maxine.partName" (list . "webhook") }}
{{- end }}

{{- define "maxine.webhookSecretName" -}}
{{- include "maxine.partName" (list . "webhook-tls") }}
{{- end }}

{{/* The peering object kopf coordinates the operator's replicas through. */}}
{{- define "maxine.peeringName" -}}
{{- include "maxine.partName" (list . "operator") }}
{{- end }}

{{/* Pod annotations: a checksum of the chart's Secret (settings are read once, at start, so a changed
secret value must restart the pods), then the user's: (list $ .Values.registry.podAnnotations). */}}
{{- define "maxine.podAnnotations" -}}
{{- $root := index . 0 }}
{{- $annotations := dict }}
{{- if include "maxine.ownSecret" $root }}
{{- $_ := set $annotations "checksum/secrets" (include (print $root.Template.BasePath "/secret.yaml") $root | sha256sum) }}
{{- end }}
{{- $annotations = merge $annotations (index . 1 | default dict) }}
{{- with $annotations }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/* Environment variables from a NAME: value map, sorted by name so that the output is stable. */}}
{{- define "maxine.envMap" -}}
{{- range $name := keys . | sortAlpha }}
- name: {{ $name }}
  value: {{ index $ $name | toString | quote }}
{{- end }}
{{- end }}
