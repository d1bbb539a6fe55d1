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
  # Its checks take up to 2 s each (at once); a shared dependency down keeps it 200.
  timeoutSeconds: 3
lifecycle:
  preStop:
    exec: {command: ["sleep", "5"]}
{{- end -}}
