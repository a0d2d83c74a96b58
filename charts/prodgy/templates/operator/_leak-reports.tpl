{{- /* The scanner's key list, in the shape the operator reads. */}}
{{- define "prodgy.leakReports.keyList" -}}
{{- $keys := list -}}
{{- range .Values.leakReports.publicKeys -}}
{{- $keys = append $keys (dict "key_identifier" .keyIdentifier "key" .key) -}}
{{- end -}}
{{- dict "public_keys" $keys | toJson -}}
{{- end -}}

{{- /* Fails on a leak-report endpoint nobody could sign for. */}}
{{- define "prodgy.leakReports.validate" -}}
{{- $l := .Values.leakReports -}}
{{- if and $l.enabled (not $l.publicKeys) (not $l.sharedSecret.existingSecret) -}}
{{- fail "leakReports.enabled needs leakReports.publicKeys or leakReports.sharedSecret.existingSecret: a report must be signed" -}}
{{- end -}}
{{- end -}}

{{- /* Operator flags of the endpoint (none when off). */}}
{{- define "prodgy.leakReports.args" -}}
{{- include "prodgy.leakReports.validate" . -}}
{{- $l := .Values.leakReports -}}
{{- if $l.enabled }}
- --leak-reports-addr=0.0.0.0:{{ $l.port }}
- --leak-action={{ $l.action }}
- --leak-max-body-bytes={{ int64 $l.maxBodyBytes }}
- --leak-max-tokens={{ int64 $l.maxTokens }}
- --leak-reports-per-second={{ int64 $l.reportsPerSecond }}
{{- if $l.publicKeys }}
- --leak-public-keys-file=/etc/prodgy/leak-keys/keys.json
{{- end }}
{{- if $l.sharedSecret.existingSecret }}
- --leak-shared-secret-file=/etc/prodgy/leak-secret/secret
{{- end }}
{{- end }}
{{- end -}}

{{- /* The operator container's leak-report port. */}}
{{- define "prodgy.leakReports.ports" -}}
{{- if .Values.leakReports.enabled }}
- name: leak-reports
  containerPort: {{ .Values.leakReports.port }}
  protocol: TCP
{{- end }}
{{- end -}}

{{- /* Mounts of the key list and the shared secret. */}}
{{- define "prodgy.leakReports.volumeMounts" -}}
{{- $l := .Values.leakReports -}}
{{- if and $l.enabled $l.publicKeys }}
- name: leak-keys
  mountPath: /etc/prodgy/leak-keys
  readOnly: true
{{- end }}
{{- if and $l.enabled $l.sharedSecret.existingSecret }}
- name: leak-secret
  mountPath: /etc/prodgy/leak-secret
  readOnly: true
{{- end }}
{{- end -}}

{{- define "prodgy.leakReports.volumes" -}}
{{- $l := .Values.leakReports -}}
{{- if and $l.enabled $l.publicKeys }}
- name: leak-keys
  configMap:
    name: {{ include "prodgy.operator.fullname" . }}-leak-keys
{{- end }}
{{- if and $l.enabled $l.sharedSecret.existingSecret }}
- name: leak-secret
  secret:
    secretName: {{ $l.sharedSecret.existingSecret }}
    items:
      - key: {{ $l.sharedSecret.secretKey }}
        path: secret
{{- end }}
{{- end -}}

{{- /* Rolls the operator when the key list changes (keys are read at start). */}}
{{- define "prodgy.leakReports.checksum" -}}
{{- if and .Values.leakReports.enabled .Values.leakReports.publicKeys }}
prodgy.io/leak-keys-checksum: {{ include "prodgy.leakReports.keyList" . | sha256sum }}
{{- end }}
{{- end -}}
