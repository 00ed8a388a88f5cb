{{- define "bpfleet.labels" -}}
app.kubernetes.io/part-of: bpfleet
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "bpfleet.operator.selector" -}}
app.kubernetes.io/name: bpfleet-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "bpfleet.agent.selector" -}}
app.kubernetes.io/name: bpfleet-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "bpfleet.operator.image" -}}
{{ .Values.image.operator.repository }}:{{ .Values.image.operator.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "bpfleet.agent.image" -}}
{{ .Values.image.agent.repository }}:{{ .Values.image.agent.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Secret names holding each side's certificate, key and the CA. */}}
{{- define "bpfleet.agent.tlsSecret" -}}
{{- if eq .Values.tls.mode "secret" -}}{{ .Values.tls.existingSecrets.agent }}{{- else -}}{{ .Release.Name }}-agent-tls{{- end -}}
{{- end -}}

{{- define "bpfleet.operator.tlsSecret" -}}
{{- if eq .Values.tls.mode "secret" -}}{{ .Values.tls.existingSecrets.operator }}{{- else -}}{{ .Release.Name }}-operator-tls{{- end -}}
{{- end -}}

{{- /*
  The Certificates' issuerRef, as the user gave it: any kind and group, so external
  issuers (AWSPCAClusterIssuer, OriginIssuer, ...) work. An empty kind or group is left
  out and cert-manager's default applies (Issuer, cert-manager.io).
*/}}
{{- define "bpfleet.certManager.issuerRef" -}}
{{- $ref := .Values.tls.certManager.issuerRef -}}
name: {{ required "tls.certManager.issuerRef.name is required with tls.mode=certManager" $ref.name | quote }}
{{- with $ref.kind }}
kind: {{ . | quote }}
{{- end }}
{{- with $ref.group }}
group: {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "bpfleet.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{- /*
  How BpfProgram writes are judged: "policy" (ValidatingAdmissionPolicy,
  admissionregistration.k8s.io/v1, Kubernetes >= 1.30), "policy-v1beta1" (1.28 and 1.29,
  chosen explicitly only: there the beta API can be served while the feature gate that
  enforces it is off, and nothing would be enforced), "webhook" (the operator's webhook)
  or "" (admission.enabled=false). admission.mode=auto picks policy where v1 is served,
  else webhook.
*/}}
{{- define "bpfleet.admission.mode" -}}
{{- if .Values.admission.enabled -}}
{{- $mode := .Values.admission.mode -}}
{{- if eq $mode "auto" -}}
{{- if .Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy" -}}policy
{{- else -}}webhook
{{- end -}}
{{- else -}}{{ $mode }}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "bpfleet.webhook.service" -}}{{ .Release.Name }}-webhook{{- end -}}
