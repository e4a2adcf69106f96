{{/*
Names are fixed, not derived from the release: the server, `sidecar-webhook check` and the admission
policy know the webhook by them, and an admission webhook is installed once per cluster (Helm refuses a
second release over the first one's objects).
*/}}

{{/* The labels of every object: deploy/'s two, then Helm's. */}}
{{- define "sidecar-webhook.labels" -}}
{{ include "sidecar-webhook.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* What the Deployment, Service, PDB and monitors select: deploy/'s labels, so that neither can
pick up the pods of the other. */}}
{{- define "sidecar-webhook.selectorLabels" -}}
app.kubernetes.io/name: sidecar-webhook
app.kubernetes.io/component: webhook
{{- end }}

{{/* The monitoring objects' labels: component monitoring, as deploy/monitoring's. */}}
{{- define "sidecar-webhook.monitoringLabels" -}}
app.kubernetes.io/name: sidecar-webhook
app.kubernetes.io/component: monitoring
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "sidecar-webhook.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end }}
{{- end }}

{{/* The file modes: a Secret of someone else's holds the certificate, the server never calls the API. */}}
{{- define "sidecar-webhook.filesMode" -}}
{{- if ne .Values.certificates.mode "cluster" }}true{{ end }}
{{- end }}

{{/* The Secret the server serves in the file modes. */}}
{{- define "sidecar-webhook.tlsSecret" -}}
{{- if eq .Values.certificates.mode "secret" }}{{ .Values.certificates.secret.name }}{{ else }}sidecar-webhook-tls{{ end }}
{{- end }}

{{/* Both webhooks' namespaceSelector: never the excluded namespaces nor the release's own, and the
user's further conditions. */}}
{{- define "sidecar-webhook.namespaceSelector" -}}
{{- with .Values.webhook.namespaceSelector.matchLabels }}
matchLabels:
  {{- toYaml . | nindent 2 }}
{{- end }}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values: {{ concat .Values.webhook.excludedNamespaces (list .Release.Namespace) | uniq | toJson }}
  {{- with .Values.webhook.namespaceSelector.matchExpressions }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* How the API server reaches a webhook path: the Service, and in the secret mode the caBundle given. */}}
{{- define "sidecar-webhook.clientConfig" -}}
{{- if eq .root.Values.certificates.mode "secret" }}
caBundle: {{ .root.Values.certificates.secret.caBundle }}
{{- end }}
service:
  name: sidecar-webhook
  namespace: {{ .root.Release.Namespace }}
  path: {{ .path }}
  port: 443
{{- end }}
