{{/* Names and labels. */}}
{{- define "streamrec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "streamrec.fullname" -}}
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

{{- define "streamrec.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "streamrec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: streamrec
{{- end }}

{{/* Selector labels of one component: include "streamrec.selectorLabels" (list $ "worker") */}}
{{- define "streamrec.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "streamrec.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "streamrec.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "streamrec.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Prometheus job names deploy/prometheus/alerts.yml asks for. */}}
{{- define "streamrec.jobLabel" -}}streamrec.io/job{{- end }}

{{/*
Settings the chart decides, then the user's `config` on top (the bind address and data dir
stay the chart's: the pod must be reachable and only the emptyDir is writable).
*/}}
{{- define "streamrec.config" -}}
{{- $chart := dict "worker" (dict) "triton" (dict) "trainer" (dict) }}
{{- if .Values.triton.enabled }}
{{- $_ := set $chart.triton "url" (printf "%s-triton:%v" (include "streamrec.fullname" .) .Values.triton.ports.grpc) }}
{{- end }}
{{- $config := mergeOverwrite $chart (deepCopy .Values.config) }}
{{- $_ := set $config.worker "web_host" "0.0.0.0" }}
{{- $_ := set $config.worker "data_dir" "/tmp/streamrec" }}
{{- $_ := set $config.trainer "metrics_host" "0.0.0.0" }}
{{- toYaml $config }}
{{- end }}

{{/*
Every file mounted for a *_file setting: a list of {group, env, file, secret, key}.
Secret values come from `secrets` (env STREAMREC_<GROUP>__<FIELD>_FILE), certificates
from `files` (env STREAMREC_<GROUP>__<FIELD>).
*/}}
{{- define "streamrec.mountedFiles" -}}
{{- $fullname := include "streamrec.fullname" . }}
{{- $mounted := list }}
{{- range $section, $suffix := dict "secrets" "_FILE" "files" "" }}
{{- range $group, $fields := get $.Values $section }}
{{- range $field, $source := $fields }}
{{- if or $source.existingSecret $source.value }}
{{- $file := printf "%s.%s" $group $field }}
{{- $env := printf "STREAMREC_%s__%s%s" (upper $group) (upper $field) $suffix }}
{{- $entry := dict "group" $group "env" $env "file" $file }}
{{- if $source.existingSecret }}
{{- $key := required (printf "%s.%s.key: the key in Secret %s" $section $file $source.existingSecret) $source.key }}
{{- $_ := merge $entry (dict "secret" $source.existingSecret "key" $key) }}
{{- else }}
{{- /* A value given in the values: the chart's own Secret (secret.yaml). */}}
{{- $_ := merge $entry (dict "secret" (printf "%s-secrets" $fullname) "key" $file) }}
{{- end }}
{{- $mounted = append $mounted $entry }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml (dict "files" $mounted) }}
{{- end }}

{{- define "streamrec.secretsDir" -}}/etc/streamrec/secrets{{- end }}

{{/*
The environment of one component as a map, for its ConfigMap:
include "streamrec.env" (dict "root" $ "groups" (list "redis")); no groups: every setting,
but those of the groups in `without`. Numbers go through toJson so 2592000 stays 2592000,
not 2.592e+06.
*/}}
{{- define "streamrec.env" -}}
{{- $root := .root }}
{{- $groups := .groups | default list }}
{{- $without := .without | default list }}
{{- $env := dict }}
{{- range $group, $fields := include "streamrec.config" $root | fromYaml }}
{{- if kindIs "map" $fields }}
{{- if and (or (not $groups) (has $group $groups)) (not (has $group $without)) }}
{{- range $field, $value := $fields }}
{{- if not (kindIs "invalid" $value) }}
{{- $_ := set $env (printf "STREAMREC_%s__%s" (upper $group) (upper $field)) (ternary $value (toJson $value) (kindIs "string" $value)) }}
{{- end }}
{{- end }}
{{- end }}
{{- else if and (not $groups) (not (kindIs "invalid" $fields)) }}
{{- $_ := set $env (printf "STREAMREC_%s" (upper $group)) (ternary $fields (toJson $fields) (kindIs "string" $fields)) }}
{{- end }}
{{- end }}
{{- range (include "streamrec.mountedFiles" $root | fromYaml).files }}
{{- if or (not $groups) (has .group $groups) }}
{{- $_ := set $env .env (printf "%s/%s" (include "streamrec.secretsDir" $root) .file) }}
{{- end }}
{{- end }}
{{- toYaml $env }}
{{- end }}

{{/*
The projected volume holding the mounted files of some groups (or all), or nothing:
include "streamrec.secretsVolume" (dict "root" $ "groups" (list "redis"))
*/}}
{{- define "streamrec.secretsVolume" -}}
{{- $groups := .groups | default list }}
{{- $sources := list }}
{{- range (include "streamrec.mountedFiles" .root | fromYaml).files }}
{{- if or (not $groups) (has .group $groups) }}
{{- $sources = append $sources (dict "secret" (dict "name" .secret "items" (list (dict "key" .key "path" .file)))) }}
{{- end }}
{{- end }}
{{- if $sources -}}
- name: secrets
  projected:
    defaultMode: 0440
    sources:
      {{- toYaml $sources | nindent 6 }}
{{- end }}
{{- end }}

{{/* Autoscaling's upper bound: never more workers than input partitions. */}}
{{- define "streamrec.maxReplicas" -}}
{{- min (int .Values.autoscaling.maxReplicas) (int .Values.config.kafka.partitions) }}
{{- end }}

{{- define "streamrec.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* The claim holding the model repository (triton.modelRepository source pvc or shared). */}}
{{- define "streamrec.modelsClaim" -}}
{{- $repository := .Values.triton.modelRepository }}
{{- if eq $repository.source "shared" }}
{{- $repository.pvc.claimName | default (printf "%s-models" (include "streamrec.fullname" .)) }}
{{- else }}
{{- required "triton.modelRepository.pvc.claimName: the claim holding the model repository" $repository.pvc.claimName }}
{{- end }}
{{- end }}

{{/*
The model repository's volume for a pod, or nothing (source image). A pvc source is
read-only; a shared one is writable where a container mounts it so (streamrec.modelsMount).
*/}}
{{- define "streamrec.modelsVolume" -}}
{{- $source := .Values.triton.modelRepository.source }}
{{- if has $source (list "pvc" "shared") -}}
- name: models
  persistentVolumeClaim:
    claimName: {{ include "streamrec.modelsClaim" . }}
    {{- if eq $source "pvc" }}
    readOnly: true
    {{- end }}
{{- end }}
{{- end }}

{{/*
A container's mount of that volume, at the repository's path (or `mountPath`):
include "streamrec.modelsMount" (dict "root" $ "readOnly" true)
*/}}
{{- define "streamrec.modelsMount" -}}
{{- $repository := .root.Values.triton.modelRepository -}}
- name: models
  mountPath: {{ .mountPath | default $repository.path }}
  subPath: {{ $repository.pvc.subPath | quote }}
  readOnly: {{ .readOnly }}
{{- end }}
