{{/* The pod template shared by the Deployment and the StatefulSet. */}}
{{- define "data-ingest-connector.podTemplate" -}}
metadata:
  labels:
    {{- include "data-ingest-connector.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    checksum/secret: {{ include (print $.Template.BasePath "/secret.yaml") . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "data-ingest-connector.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: worker
      image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      command: ["data-ingest"]
      args: ["--log-level", {{ .Values.worker.logLevel | quote }}, "worker", "-c", "/etc/data-ingest/worker.yaml"]
      ports:
        - name: http
          containerPort: {{ .Values.worker.port }}
          protocol: TCP
      env:
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: KAFKA_BOOTSTRAP_SERVERS
          value: {{ .Values.kafka.bootstrapServers | quote }}
        {{- range $name, $value := .Values.env }}
        - name: {{ $name }}
          value: {{ toString $value | quote }}
        {{- end }}
        {{- $secret := include "data-ingest-connector.secretName" . }}
        {{- range $key := (include "data-ingest-connector.secretKeys" . | fromJsonArray) }}
        - name: {{ $key }}
          valueFrom:
            secretKeyRef:
              name: {{ $secret }}
              key: {{ $key }}
        {{- end }}
      startupProbe:
        httpGet: {path: /ping, port: http}
        {{- toYaml .Values.probes.startup | nindent 8 }}
      livenessProbe:
        httpGet: {path: /ping, port: http}
        {{- toYaml .Values.probes.liveness | nindent 8 }}
      readinessProbe:
        httpGet: {path: /ready, port: http}
        {{- toYaml .Values.probes.readiness | nindent 8 }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/data-ingest
          readOnly: true
        - name: tmp
          mountPath: /tmp
        {{- if include "data-ingest-connector.stateful" . }}
        - name: data
          mountPath: /var/lib/data-ingest
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "data-ingest-connector.fullname" . }}
        items:
          - {key: worker.yaml, path: worker.yaml}
          {{- range $name, $_ := .Values.connectors }}
          - {key: connector.{{ $name }}.yaml, path: connectors/{{ $name }}.yaml}
          {{- end }}
          {{- range $name, $_ := .Values.objectTypes }}
          - {key: avro.{{ $name }}.avsc, path: avro/{{ $name }}.avsc}
          {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
