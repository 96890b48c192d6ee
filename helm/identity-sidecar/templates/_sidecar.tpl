{{/*
Sidecar mode (mode: sidecar): the sidecar joins an existing app's pod instead of running its
own. The app's chart lists this chart as a dependency and includes two templates, with this
chart's context (`index .Subcharts "identity-sidecar"`, Helm 3.12+):

  initContainers:
    {{- include "identity-sidecar.sidecarContainer" (index .Subcharts "identity-sidecar") | nindent 8 }}
  volumes:
    {{- include "identity-sidecar.sidecarVolumes" (index .Subcharts "identity-sidecar") | nindent 8 }}

The container is a native sidecar (an init container with restartPolicy: Always, Kubernetes
1.29+): it starts before the app and stops after it. It sets its own user and group, so the
app's pod-level securityContext stays the app's. The admin listener stays on 127.0.0.1 (its
probes run `identity-sidecar health` inside the container); Prometheus scrapes the
metrics-only port (server.metrics_listen). The app binds 127.0.0.1:sidecar.appPort and is
reached only through the sidecar (upstream.url); the NetworkPolicy admits only the
sidecar's ports.
*/}}
{{- define "identity-sidecar.sidecarContainer" -}}
- name: identity-sidecar
  image: {{ include "identity-sidecar.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  # Native sidecar: runs for the pod's whole life, started before the app container.
  restartPolicy: Always
  args: ["serve"]
  ports:
    - name: sidecar-http
      containerPort: 8080
      protocol: TCP
    {{- if gt (int .Values.sidecar.metricsPort) 0 }}
    - name: sidecar-metrics
      containerPort: {{ int .Values.sidecar.metricsPort }}
      protocol: TCP
    {{- end }}
  env:
    - name: SIDECAR_CONFIG
      value: /etc/identity-sidecar/config.toml
    # The admin API and health stay inside the pod; probes run the binary.
    - name: SIDECAR__SERVER__ADMIN_LISTEN
      value: "127.0.0.1:8081"
    # The app in the same pod, bound to loopback.
    - name: SIDECAR__UPSTREAM__URL
      value: {{ printf "http://127.0.0.1:%d" (int .Values.sidecar.appPort) | quote }}
    {{- if gt (int .Values.sidecar.metricsPort) 0 }}
    - name: SIDECAR__SERVER__METRICS_LISTEN
      value: {{ printf "0.0.0.0:%d" (int .Values.sidecar.metricsPort) | quote }}
    {{- end }}
    {{- include "identity-sidecar.secretEnv" . | trim | nindent 4 }}
    {{- include "identity-sidecar.cacheEnv" . | nindent 4 }}
    {{- if .Values.migrations.job.enabled }}
    - name: SIDECAR__DATABASE__MIGRATE_ON_START
      value: "false"
    {{- end }}
    {{- with .Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  startupProbe:
    exec:
      command: ["/usr/local/bin/identity-sidecar", "health"]
    periodSeconds: {{ .Values.probes.startup.periodSeconds }}
    timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
    failureThreshold: {{ .Values.probes.startup.failureThreshold }}
  livenessProbe:
    exec:
      command: ["/usr/local/bin/identity-sidecar", "health"]
    periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
    timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
    failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
  readinessProbe:
    exec:
      command: ["/usr/local/bin/identity-sidecar", "health", "--ready"]
    periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
    timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
    failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
  resources:
    {{- toYaml (merge (deepCopy .Values.resources) (include "identity-sidecar.derivedMemory" . | fromYaml)) | nindent 4 }}
  # The container's own user and group: the pod-level securityContext belongs to the app.
  securityContext:
    {{- $ids := dict "runAsUser" (int .Values.podSecurityContext.runAsUser) "runAsGroup" (int .Values.podSecurityContext.runAsGroup) }}
    {{- toYaml (merge $ids (deepCopy .Values.securityContext)) | nindent 4 }}
  volumeMounts:
    - name: identity-sidecar-config
      mountPath: /etc/identity-sidecar/config.toml
      subPath: config.toml
      readOnly: true
    - name: identity-sidecar-tmp
      mountPath: /tmp
    {{- if include "identity-sidecar.secretSources" . | trim }}
    - name: identity-sidecar-secrets
      mountPath: {{ .Values.secrets.mountPath }}
      readOnly: true
    {{- end }}
    {{- if not (include "identity-sidecar.postgres" .) }}
    - name: identity-sidecar-data
      mountPath: {{ include "identity-sidecar.sqliteDir" . }}
    {{- end }}
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/*
The volumes the sidecar container mounts, for the app pod's `volumes`. Secret files are
readable by every user (0444): the app's pod sets the fsGroup, not this chart. Without
PostgreSQL the SQLite file lives in an emptyDir and goes with the pod.
*/}}
{{- define "identity-sidecar.sidecarVolumes" -}}
{{- $secretSources := include "identity-sidecar.secretSources" . | trim }}
- name: identity-sidecar-config
  configMap:
    name: {{ include "identity-sidecar.fullname" . }}
- name: identity-sidecar-tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- if $secretSources }}
- name: identity-sidecar-secrets
  projected:
    defaultMode: 0444
    sources:
      {{- $secretSources | nindent 6 }}
{{- end }}
{{- if not (include "identity-sidecar.postgres" .) }}
- name: identity-sidecar-data
  emptyDir: {}
{{- end }}
{{- end }}
