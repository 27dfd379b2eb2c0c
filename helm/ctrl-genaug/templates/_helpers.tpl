{{/* Names, labels and the pieces every workload shares. */}}

{{- define "ctrl-genaug.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ctrl-genaug.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A service key (condition_encoder) as a Kubernetes name part (condition-encoder). */}}
{{- define "ctrl-genaug.component" -}}
{{- . | replace "_" "-" -}}
{{- end -}}

{{/* The object name of a component: dict "root" $ "component" "sampler". */}}
{{- define "ctrl-genaug.componentName" -}}
{{- printf "%s-%s" (include "ctrl-genaug.fullname" .root) (include "ctrl-genaug.component" .component) -}}
{{- end -}}

{{- define "ctrl-genaug.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ctrl-genaug.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ include "ctrl-genaug.component" .component }}
{{- end -}}

{{- define "ctrl-genaug.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "ctrl-genaug.selectorLabels" . }}
app.kubernetes.io/part-of: ctrl-genaug
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{/* Labels of the release as a whole (monitoring objects, secrets). */}}
{{- define "ctrl-genaug.releaseLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "ctrl-genaug.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: ctrl-genaug
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "ctrl-genaug.image" -}}
{{- $tag := .Values.image.tag | default (printf "%s-%s" .Chart.AppVersion .Values.image.variant) -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{- define "ctrl-genaug.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ctrl-genaug.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* A service's setting, falling back to .Values.defaults: dict "root" $ "svc" $svc "key" "drainSeconds". */}}
{{- define "ctrl-genaug.setting" -}}
{{- if hasKey .svc .key -}}{{- index .svc .key -}}{{- else -}}{{- index .root.Values.defaults .key -}}{{- end -}}
{{- end -}}

{{/* Whether TLS / the token apply to a service (the externally reached ones). */}}
{{- define "ctrl-genaug.secured" -}}
{{- if has . (list "sampler" "filter") -}}true{{- end -}}
{{- end -}}

{{- define "ctrl-genaug.authSecretName" -}}
{{- .Values.security.auth.existingSecret | default (printf "%s-auth" (include "ctrl-genaug.fullname" .)) -}}
{{- end -}}

{{- define "ctrl-genaug.jobClaimName" -}}
{{- .Values.job.pvc.existingClaim | default (printf "%s-augment" (include "ctrl-genaug.fullname" .)) -}}
{{- end -}}

{{/*
The PromQL selector of this release's scraped series. The ServiceMonitor sets `job` to the
Service name and `namespace`; the test's scrape config sets the same labels.
*/}}
{{- define "ctrl-genaug.promSelector" -}}
namespace="{{ .Release.Namespace }}",job=~"{{ include "ctrl-genaug.fullname" . }}-.+"
{{- end -}}

{{/* The exact query the sampler's autoscalers use: waiting requests, all priorities. */}}
{{- define "ctrl-genaug.queueDepthQuery" -}}
sum(genaug_sampler_queue_depth{namespace="{{ .Release.Namespace }}",job="{{ include "ctrl-genaug.componentName" (dict "root" . "component" "sampler") }}"})
{{- end -}}
