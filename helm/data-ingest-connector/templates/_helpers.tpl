{{/* Names and labels. */}}
{{- define "data-ingest-connector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "data-ingest-connector.fullname" -}}
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

{{- define "data-ingest-connector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "data-ingest-connector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "data-ingest-connector.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "data-ingest-connector.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "data-ingest-connector.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "data-ingest-connector.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret whose keys become environment variables: an existing one or the chart's. */}}
{{- define "data-ingest-connector.secretName" -}}
{{- default (include "data-ingest-connector.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* The keys of that Secret, sorted. */}}
{{- define "data-ingest-connector.secretKeys" -}}
{{- if .Values.secrets.existingSecret }}
{{- toJson (sortAlpha (uniq .Values.secrets.keys)) }}
{{- else }}
{{- toJson (sortAlpha (keys .Values.secrets.values)) }}
{{- end }}
{{- end }}

{{/*
The connectors as a map name -> pipeline (parsed), each with schemas.dir defaulting to
../avro (relative to /etc/data-ingest/connectors/NAME.yaml: the objectTypes). Refuses a
file that is not YAML and a literal secret where a ${VAR} reference belongs.
*/}}
{{- define "data-ingest-connector.connectors" -}}
{{- $out := dict }}
{{- range $name, $value := .Values.connectors }}
{{- $pipeline := $value }}
{{- if kindIs "string" $value }}
{{- $pipeline = fromYaml $value }}
{{- if hasKey $pipeline "Error" }}
{{- fail (printf "connectors.%s is not a YAML mapping: %s" $name (get $pipeline "Error")) }}
{{- end }}
{{- end }}
{{- $pipeline = deepCopy $pipeline }}
{{- $schemas := default dict $pipeline.schemas }}
{{- if not $schemas.dir }}
{{- $_ := set $pipeline "schemas" (merge (dict "dir" "../avro") $schemas) }}
{{- end }}
{{- $kafka := default dict $pipeline.kafka }}
{{- $security := default dict $kafka.security }}
{{- $sasl := default dict $security.sasl }}
{{- if and $sasl.password (not (hasPrefix "${" (toString $sasl.password))) }}
{{- fail (printf "connectors.%s: kafka.security.sasl.password must reference a secret as ${VAR} (a key of the Secret, see `secrets`), not hold the password: the pipeline file is stored in a ConfigMap" $name) }}
{{- end }}
{{- $tls := default dict $security.tls }}
{{- if and $tls.key_password (not (hasPrefix "${" (toString $tls.key_password))) }}
{{- fail (printf "connectors.%s: kafka.security.tls.key_password must reference a secret as ${VAR}, not hold it: the pipeline file is stored in a ConfigMap" $name) }}
{{- end }}
{{- $_ := set $out $name $pipeline }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* The names of the connectors with the sqlite backend, as a JSON list. */}}
{{- define "data-ingest-connector.sqliteConnectors" -}}
{{- $names := list }}
{{- range $name, $pipeline := (include "data-ingest-connector.connectors" . | fromYaml) }}
{{- $backend := default dict $pipeline.backend }}
{{- if eq (toString $backend.type) "sqlite" }}
{{- $names = append $names $name }}
{{- end }}
{{- end }}
{{- toJson $names }}
{{- end }}

{{/* The largest shutdown.timeout_ms of the connectors (the connector's default: 30000). */}}
{{- define "data-ingest-connector.maxShutdownMs" -}}
{{- $max := 30000 }}
{{- range $name, $pipeline := (include "data-ingest-connector.connectors" . | fromYaml) }}
{{- $shutdown := default dict $pipeline.shutdown }}
{{- if hasKey $shutdown "timeout_ms" }}
{{- $max = max $max (int $shutdown.timeout_ms) }}
{{- end }}
{{- end }}
{{- $max }}
{{- end }}

{{/*
Checks across values that values.schema.json cannot express; included by the workload,
so that every render and every lint runs them.
*/}}
{{- define "data-ingest-connector.validate" -}}
{{- $sqlite := include "data-ingest-connector.sqliteConnectors" . | fromJsonArray }}
{{- $keda := .Values.autoscaling.keda }}
{{- $hpa := .Values.autoscaling.hpa }}
{{- if $sqlite }}
{{- if gt (int .Values.replicaCount) 1 }}
{{- fail (printf "replicaCount is %d, but connector %s uses the sqlite backend: an SQLite file lives on one volume and takes one writer, so the chart runs exactly one replica (a StatefulSet). Set replicaCount: 1, or use the postgres or mongodb backend to run more." (int .Values.replicaCount) (first $sqlite)) }}
{{- end }}
{{- if or $keda.enabled $hpa.enabled }}
{{- fail (printf "autoscaling is enabled, but connector %s uses the sqlite backend, which runs exactly one replica. Disable autoscaling.keda and autoscaling.hpa, or use the postgres or mongodb backend." (first $sqlite)) }}
{{- end }}
{{- range $name, $pipeline := (include "data-ingest-connector.connectors" . | fromYaml) }}
{{- if eq (toString (default dict $pipeline.backend).type) "sqlite" }}
{{- if not (hasPrefix "/var/lib/data-ingest/" (toString $pipeline.backend.path)) }}
{{- fail (printf "connectors.%s: backend.path %q is not on the persistent volume; put the SQLite file below /var/lib/data-ingest/ (the root filesystem is read-only)" $name (toString $pipeline.backend.path)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $keda.enabled $hpa.enabled }}
{{- fail "autoscaling.keda.enabled and autoscaling.hpa.enabled are both true; choose one (two autoscalers on one Deployment fight each other)" }}
{{- end }}
{{- if $keda.enabled }}
{{- if not (hasKey .Values.connectors $keda.connector) }}
{{- fail (printf "autoscaling.keda.connector %q is not a key of connectors; name the connector whose consumer group KEDA should watch" $keda.connector) }}
{{- end }}
{{- if gt (int $keda.maxReplicaCount) (int $keda.partitions) }}
{{- fail (printf "autoscaling.keda.maxReplicaCount (%d) is above autoscaling.keda.partitions (%d): a consumer group gives each partition to one member, so the extra replicas would idle. Lower maxReplicaCount or set partitions to the topic's partition count." (int $keda.maxReplicaCount) (int $keda.partitions)) }}
{{- end }}
{{- if gt (int $keda.minReplicaCount) (int $keda.maxReplicaCount) }}
{{- fail (printf "autoscaling.keda.minReplicaCount (%d) is above maxReplicaCount (%d)" (int $keda.minReplicaCount) (int $keda.maxReplicaCount)) }}
{{- end }}
{{- end }}
{{- if and $hpa.enabled (gt (int $hpa.minReplicas) (int $hpa.maxReplicas)) }}
{{- fail (printf "autoscaling.hpa.minReplicas (%d) is above maxReplicas (%d)" (int $hpa.minReplicas) (int $hpa.maxReplicas)) }}
{{- end }}
{{- $shutdownS := div (add (int (include "data-ingest-connector.maxShutdownMs" .)) 999) 1000 }}
{{- if le (int .Values.terminationGracePeriodSeconds) (int $shutdownS) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than the connectors' shutdown timeout (%d s, shutdown.timeout_ms): otherwise Kubernetes kills the worker before it has committed what the backend acknowledged" (int .Values.terminationGracePeriodSeconds) (int $shutdownS)) }}
{{- end }}
{{- if and .Values.kafka.sasl.enabled (not (has .Values.kafka.sasl.passwordKey (include "data-ingest-connector.secretKeys" . | fromJsonArray))) }}
{{- fail (printf "kafka.sasl.enabled: the Secret has no key %s (kafka.sasl.passwordKey); add it to secrets.values, or to secrets.keys with secrets.existingSecret" .Values.kafka.sasl.passwordKey) }}
{{- end }}
{{- $clusterSasl := ((((.Values.worker.cluster).kafka).security).sasl) | default dict }}
{{- if and $clusterSasl.password (not (hasPrefix "${" (toString $clusterSasl.password))) }}
{{- fail "worker.cluster.kafka.security.sasl.password must reference a secret as ${VAR} (a key of the Secret, see `secrets`), not hold the password: worker.yaml is stored in a ConfigMap" }}
{{- end }}
{{- if and .Values.worker.restTokenKey (not (has .Values.worker.restTokenKey (include "data-ingest-connector.secretKeys" . | fromJsonArray))) }}
{{- fail (printf "worker.restTokenKey: the Secret has no key %s; add it to secrets.values, or to secrets.keys with secrets.existingSecret" .Values.worker.restTokenKey) }}
{{- end }}
{{- end }}

{{/* true when the workload is a StatefulSet (the sqlite backend). */}}
{{- define "data-ingest-connector.stateful" -}}
{{- if (include "data-ingest-connector.sqliteConnectors" . | fromJsonArray) }}true{{ end }}
{{- end }}
