{{/*
Chart name, truncated to the 63 characters of a DNS label.
*/}}
{{- define "identity-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: release-chart, or the release name when it already contains the
chart name.
*/}}
{{- define "identity-sidecar.fullname" -}}
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

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "identity-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Standard labels of every object.
*/}}
{{- define "identity-sidecar.labels" -}}
helm.sh/chart: {{ include "identity-sidecar.chart" . }}
{{ include "identity-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: identity-sidecar
{{- end }}

{{/*
Selector labels of the release.
*/}}
{{- define "identity-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "identity-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Selector labels of the serving pods (the Deployment's), so the migration Job's pod is never
a Service endpoint nor selected by the NetworkPolicy or the PodDisruptionBudget.
*/}}
{{- define "identity-sidecar.serverSelectorLabels" -}}
{{ include "identity-sidecar.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{/*
ServiceAccount of the serving pods.
*/}}
{{- define "identity-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "identity-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Container image reference: repository@digest, or repository:tag (tag defaults to appVersion).
*/}}
{{- define "identity-sidecar.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
"true" when the store is PostgreSQL (a database URL Secret is referenced), else empty.
*/}}
{{- define "identity-sidecar.postgres" -}}
{{- if .Values.secrets.databaseUrl.name }}true{{ end }}
{{- end }}

{{/*
"true" when more than one pod may run: replicaCount > 1 or the HPA is on.
*/}}
{{- define "identity-sidecar.multiReplica" -}}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{/*
Where SQLite lives when there is no PostgreSQL Secret.
*/}}
{{- define "identity-sidecar.sqliteDir" -}}
/var/lib/identity-sidecar
{{- end }}

{{- define "identity-sidecar.sqliteUrl" -}}
{{- printf "sqlite://%s/identity-sidecar.db?mode=rwc" (include "identity-sidecar.sqliteDir" .) }}
{{- end }}

{{/*
Name of the SQLite PersistentVolumeClaim.
*/}}
{{- define "identity-sidecar.pvcName" -}}
{{- .Values.sqlite.persistence.existingClaim | default (printf "%s-data" (include "identity-sidecar.fullname" .)) }}
{{- end }}

{{/*
Refuses to render unsafe or contradictory values. Included by deployment.yaml, which is
always rendered.
*/}}
{{- define "identity-sidecar.validate" -}}
{{- if not (has .Values.mode (list "deployment" "sidecar")) }}
{{- fail "identity-sidecar: mode must be \"deployment\" or \"sidecar\"." }}
{{- end }}
{{- if and (eq .Values.mode "sidecar") .Values.networkPolicy.enabled (not .Values.sidecar.podSelector) }}
{{- fail "identity-sidecar: in sidecar mode the NetworkPolicy selects the app's pods: set sidecar.podSelector to their labels (an empty selector would take every pod of the namespace), or networkPolicy.enabled=false." }}
{{- end }}
{{- if and (eq .Values.mode "sidecar") (include "identity-sidecar.multiReplica" .) }}
{{- fail "identity-sidecar: in sidecar mode the app's workload sets the replicas; leave replicaCount at 1 and autoscaling off." }}
{{- end }}
{{- if include "identity-sidecar.multiReplica" . }}
{{- if not .Values.secrets.databaseUrl.name }}
{{- fail "identity-sidecar: more than one replica (replicaCount > 1 or autoscaling.enabled) requires PostgreSQL: set secrets.databaseUrl.name (and .key) to an existing Secret holding a postgres:// URL. SQLite serves a single replica only." }}
{{- end }}
{{- if not .Values.secrets.signingKey.name }}
{{- fail "identity-sidecar: more than one replica (replicaCount > 1 or autoscaling.enabled) requires a shared entitlement signing key: set secrets.signingKey.name (and .key) to an existing Secret holding an ES256 private key (PEM). Without it every replica signs with its own ephemeral key." }}
{{- end }}
{{- end }}
{{- if and .Values.migrations.job.enabled (not .Values.secrets.databaseUrl.name) }}
{{- fail "identity-sidecar: migrations.job.enabled requires PostgreSQL (secrets.databaseUrl.name). With SQLite the server migrates its own file on start (database.migrate_on_start); leave the Job disabled." }}
{{- end }}
{{- if not (regexMatch "(?m)^[ \\t]*admin_listen[ \\t]*=[ \\t]*\"(0\\.0\\.0\\.0|\\[::\\]):8081\"" .Values.config) }}
{{- fail "identity-sidecar: `config` must set server.admin_listen = \"0.0.0.0:8081\" (or \"[::]:8081\"): probes, Service and NetworkPolicy use the admin port 8081, and the kubelet cannot reach a loopback address." }}
{{- end }}
{{- if regexMatch "(?m)^[ \\t]*listen[ \\t]*=[ \\t]*\"[^\"]*\"" .Values.config }}
{{- if not (regexMatch "(?m)^[ \\t]*listen[ \\t]*=[ \\t]*\"[^\"]*:8080\"" .Values.config) }}
{{- fail "identity-sidecar: `config` server.listen must use port 8080 (the container port the Service targets), e.g. \"0.0.0.0:8080\"." }}
{{- end }}
{{- end }}
{{- end }}

{{/*
cache.max_bytes from memory.cacheMaxBytes, so the caches and the memory limit agree.
*/}}
{{- define "identity-sidecar.cacheEnv" -}}
- name: SIDECAR__CACHE__MAX_BYTES
  value: {{ int64 .Values.memory.cacheMaxBytes | quote }}
{{- end }}

{{/*
Memory request and limit (equal) derived from the cache bound: cacheMaxBytes + baselineBytes
+ cacheMaxBytes x headroomPercent / 100, rounded up to whole MiB.
*/}}
{{- define "identity-sidecar.derivedMemory" -}}
{{- $cache := int64 .Values.memory.cacheMaxBytes }}
{{- $bytes := add $cache (int64 .Values.memory.baselineBytes) (div (mul $cache (int64 .Values.memory.headroomPercent)) 100) }}
{{- $mib := printf "%dMi" (div (add $bytes 1048575) 1048576) }}
requests:
  memory: {{ $mib }}
limits:
  memory: {{ $mib }}
{{- end }}

{{/*
The Secret files of the serving pods, as a projected volume's sources.
*/}}
{{- define "identity-sidecar.secretSources" -}}
{{- with .Values.secrets.databaseUrl }}
{{- if .name }}
- secret:
    name: {{ .name }}
    items:
      - key: {{ .key }}
        path: database-url
{{- end }}
{{- end }}
{{- with .Values.secrets.redisUrl }}
{{- if .name }}
- secret:
    name: {{ .name }}
    items:
      - key: {{ .key }}
        path: redis-url
{{- end }}
{{- end }}
{{- with .Values.secrets.keycloakClientSecret }}
{{- if .name }}
- secret:
    name: {{ .name }}
    items:
      - key: {{ .key }}
        path: keycloak-client-secret
{{- end }}
{{- end }}
{{- with .Values.secrets.signingKey }}
{{- if .name }}
- secret:
    name: {{ .name }}
    items:
      - key: {{ .key }}
        path: signing-key.pem
{{- end }}
{{- end }}
{{- range $i, $s := .Values.secrets.previousSigningKeys }}
- secret:
    name: {{ required "secrets.previousSigningKeys[].name is required" $s.name }}
    items:
      - key: {{ required "secrets.previousSigningKeys[].key is required" $s.key }}
        path: {{ printf "previous-signing-key-%d.pem" $i }}
{{- end }}
{{- end }}

{{/*
SIDECAR__* variables pointing the `*_file` keys at the mounted Secret files, and the
database URL: the PostgreSQL Secret file, or SQLite in the data volume.
*/}}
{{- define "identity-sidecar.secretEnv" -}}
{{- $dir := .Values.secrets.mountPath }}
{{- if .Values.secrets.databaseUrl.name }}
- name: SIDECAR__DATABASE__URL_FILE
  value: {{ printf "%s/database-url" $dir | quote }}
{{- else }}
- name: SIDECAR__DATABASE__URL
  value: {{ include "identity-sidecar.sqliteUrl" . | quote }}
{{- end }}
{{- if .Values.secrets.redisUrl.name }}
- name: SIDECAR__CACHE__REDIS_URL_FILE
  value: {{ printf "%s/redis-url" $dir | quote }}
{{- end }}
{{- if .Values.secrets.keycloakClientSecret.name }}
- name: SIDECAR__KEYCLOAK_ADMIN__CLIENT_SECRET_FILE
  value: {{ printf "%s/keycloak-client-secret" $dir | quote }}
{{- end }}
{{- if .Values.secrets.signingKey.name }}
- name: SIDECAR__ENTITLEMENTS__SIGNING_KEY_FILE
  value: {{ printf "%s/signing-key.pem" $dir | quote }}
{{- end }}
{{- with .Values.secrets.previousSigningKeys }}
{{- $files := list }}
{{- range $i, $s := . }}
{{- $files = append $files (printf "%s/previous-signing-key-%d.pem" $dir $i) }}
{{- end }}
- name: SIDECAR__ENTITLEMENTS__PREVIOUS_KEY_FILES
  value: {{ toJson $files | quote }}
{{- end }}
{{- end }}
