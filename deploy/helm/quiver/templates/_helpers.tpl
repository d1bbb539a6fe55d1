{{- define "quiver.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "quiver.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "quiver.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "quiver.secretName" -}}
{{ .Values.existingSecret | default (include "quiver.fullname" .) }}
{{- end -}}

{{/* Environment every Quiver process needs: storage, bus, secret, logs. */}}
{{- define "quiver.env" -}}
- name: DATABASE_URL
  valueFrom: {secretKeyRef: {name: {{ include "quiver.secretName" . }}, key: DATABASE_URL}}
- name: REDIS_URL
  valueFrom: {secretKeyRef: {name: {{ include "quiver.secretName" . }}, key: REDIS_URL}}
- name: QUIVER_JWT_SECRET
  valueFrom: {secretKeyRef: {name: {{ include "quiver.secretName" . }}, key: QUIVER_JWT_SECRET}}
- name: QUIVER_BUS_PREFIX
  value: {{ .Values.busPrefix | quote }}
- name: QUIVER_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: QUIVER_ADDR
  value: "0.0.0.0:8080"
{{- end -}}

{{- define "quiver.probes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 10
readinessProbe:
  httpGet: {path: /readyz, port: http}
  periodSeconds: 5
  # Its checks take up to 2 s each (at once). A data-plane pod stays 200 (`degraded`)
  # with Postgres or Redis down; a control-plane pod is 503 without Postgres.
  timeoutSeconds: 3
lifecycle:
  preStop:
    exec: {command: ["sleep", "5"]}
{{- end -}}

{{/* Each container's securityContext. */}}
{{- define "quiver.containerSecurityContext" -}}
securityContext: {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end -}}

{{/* Bytes in a Kubernetes memory quantity (2Gi, 1536Mi, 2G, 2147483648). */}}
{{- define "quiver.quantityBytes" -}}
{{- $text := toString .value | trim -}}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?([eE][+-]?[0-9]+)?" $text -}}
{{- $unit := trimPrefix $number $text -}}
{{- $scales := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000
      "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 -}}
{{- if or (not $number) (not (hasKey $scales $unit)) -}}
{{- fail (printf "%s %q is not a memory size the chart reads: use e.g. 2Gi or 1536Mi" .name $text) -}}
{{- end -}}
{{- mulf (float64 $number) (index $scales $unit) | int64 -}}
{{- end -}}

{{/* Bytes in a size as Quiver reads it (--index-memory): a whole number, bare or with
KiB, MiB or GiB (K, KB, M, MB, G, GB mean the same). */}}
{{- define "quiver.sizeBytes" -}}
{{- $text := toString .value | trim -}}
{{- $number := regexFind "^[0-9]+" $text -}}
{{- $unit := trimPrefix $number $text | trim -}}
{{- $scales := dict "" 1 "B" 1 "K" 1024 "KB" 1024 "KiB" 1024 "M" 1048576 "MB" 1048576 "MiB" 1048576
      "G" 1073741824 "GB" 1073741824 "GiB" 1073741824 -}}
{{- if or (not $number) (not (hasKey $scales $unit)) (eq (atoi $number) 0) -}}
{{- fail (printf "%s %q is not a size Quiver reads: use a whole number with MiB or GiB, e.g. 768MiB" .name $text) -}}
{{- end -}}
{{- mul (atoi $number) (index $scales $unit) -}}
{{- end -}}
