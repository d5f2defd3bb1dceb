{{/*
Helpers of the waypost chart.

Every template here takes a root-like context: a map with .Values (this chart's values), .Release,
.Chart and, optionally, .Capabilities. This chart passes its own root (`.`); a chart that adds the
sidecar to its own pods passes
  (dict "Values" .Values.waypost "Release" .Release "Chart" .Chart "Capabilities" .Capabilities)
so the same templates render the same sidecar there (README: "Adding the sidecar to another chart").
*/}}

{{/* Chart name. */}}
{{- define "waypost.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: release-chart, or the release alone when it already names the chart. */}}
{{- define "waypost.fullname" -}}
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

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "waypost.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "waypost.labels" -}}
helm.sh/chart: {{ include "waypost.chart" . }}
{{ include "waypost.selectorLabels" . }}
{{- with .Chart.AppVersion }}
app.kubernetes.io/version: {{ . | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the pods. */}}
{{- define "waypost.selectorLabels" -}}
app.kubernetes.io/name: {{ include "waypost.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "waypost.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "waypost.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The ConfigMap holding waypost's config.yaml. */}}
{{- define "waypost.configMapName" -}}
{{- printf "%s-config" (include "waypost.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
waypost's config.yaml: config.raw verbatim when set, else every other key of `config` as YAML.
*/}}
{{- define "waypost.configYaml" -}}
{{- if .Values.config.raw }}
{{- .Values.config.raw }}
{{- else }}
{{- toYaml (omit .Values.config "raw") }}
{{- end }}
{{- end }}

{{/*
The config as JSON (templates can only return strings): what the pod spec derives from it — the
admin port for probes, ports and annotations, the outbound address and services for the app's env.
Fails when the config cannot serve a pod: invalid YAML, or an admin listener on loopback (the
kubelet and Prometheus reach the pod IP, not the container's loopback).
*/}}
{{- define "waypost.configJson" -}}
{{- $cfg := fromYaml (include "waypost.configYaml" .) }}
{{- if hasKey $cfg "Error" }}
{{- fail (printf "config.raw is not valid YAML: %s" (get $cfg "Error")) }}
{{- end }}
{{- $admin := get $cfg "admin" | default dict }}
{{- $adminListen := get $admin "listen" | default "127.0.0.1:4191" | toString }}
{{- if regexMatch "^(127\\.|\\[::1\\]|localhost)" $adminListen }}
{{- fail (printf "config.admin.listen is %s: the kubelet's probes and Prometheus reach the pod IP, not the container's loopback, so bind the admin listener to 0.0.0.0:4191 or ${POD_IP}:4191" $adminListen) }}
{{- end }}
{{- $adminPort := regexFind "[0-9]+$" $adminListen }}
{{- if not $adminPort }}
{{- fail (printf "config.admin.listen is %s: the chart needs a literal port at its end (e.g. 0.0.0.0:4191) for probes and scraping" $adminListen) }}
{{- end }}
{{- $listen := get $cfg "listen" | default "127.0.0.1:4140" | toString }}
{{- $services := dict }}
{{- range $name, $svc := (get $cfg "services" | default dict) }}
{{- $_ := set $services ($name | toString) (get ($svc | default dict) "listen" | default "" | toString) }}
{{- end }}
{{- $registry := get $cfg "registry" | default dict }}
{{- $file := get $registry "file" | default dict }}
{{- $registrations := get $cfg "register" | default list }}
{{- dict "adminPort" ($adminPort | int) "listen" $listen "services" $services "registryDir" (get $file "dir" | default "/tmp/waypost/registry") "registrations" (len $registrations) | toJson }}
{{- end }}

{{/* An address the app can dial: a wildcard listener is reached on loopback. */}}
{{- define "waypost.dialAddr" -}}
{{- $a := . | toString }}
{{- if hasPrefix "0.0.0.0:" $a }}
{{- printf "127.0.0.1:%s" (trimPrefix "0.0.0.0:" $a) }}
{{- else if hasPrefix "[::]:" $a }}
{{- printf "[::1]:%s" (trimPrefix "[::]:" $a) }}
{{- else }}
{{- $a }}
{{- end }}
{{- end }}

{{/* Pod annotations waypost needs: Prometheus scraping and a config checksum (rolls the pods). */}}
{{- define "waypost.podAnnotations" -}}
{{- $cfg := include "waypost.configJson" . | fromJson }}
checksum/waypost-config: {{ include "waypost.configYaml" . | sha256sum }}
{{- if .Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ $cfg.adminPort | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/*
Env items for the app container: where waypost listens. WAYPOST_URL is the outbound listener
(route with `Host: <service>`); WAYPOST_<SERVICE>_URL is the service's own listener when it has
one, else http://<service> (through HTTP_PROXY). Renders nothing when both options are off.
*/}}
{{- define "waypost.appEnv" -}}
{{- $cfg := include "waypost.configJson" . | fromJson }}
{{- $outbound := include "waypost.dialAddr" $cfg.listen }}
{{- if .Values.app.waypostEnv }}
- name: WAYPOST_URL
  value: {{ printf "http://%s" $outbound | quote }}
{{- range $name, $listen := $cfg.services }}
- name: {{ printf "WAYPOST_%s_URL" (regexReplaceAll "[^A-Z0-9]" (upper $name) "_") }}
  value: {{ printf "http://%s" (ternary (include "waypost.dialAddr" $listen) $name (ne $listen "")) | quote }}
{{- end }}
{{- end }}
{{- if .Values.app.httpProxy.enabled }}
{{- $noProxy := join "," .Values.app.httpProxy.noProxy }}
- name: HTTP_PROXY
  value: {{ printf "http://%s" $outbound | quote }}
- name: http_proxy
  value: {{ printf "http://%s" $outbound | quote }}
- name: NO_PROXY
  value: {{ $noProxy | quote }}
- name: no_proxy
  value: {{ $noProxy | quote }}
{{- end }}
{{- end }}

{{/*
The waypost container, as one list item: put it under `initContainers` when
.Values.sidecar.native is true, else under `containers`. Needs the volumes of
"waypost.sidecarVolumes" in the same pod.

Native (Kubernetes >= 1.29): an init container with restartPolicy Always; its startup probe on
/ready/outbound holds the app back until waypost has resolved its services (not until the app is
registered: that waits for the app it holds back), and the kubelet stops it only
after the app containers have exited, so the app never loses its proxy while draining.

Classic: a second container. Both containers get SIGTERM at the same moment, so waypost's preStop
sleeps first (sidecar.preStopSleepSeconds): the app finishes its outbound calls and endpoints
drain before waypost starts its own shutdown (fail /ready, deregister, wait up to
config.shutdown.deregister_wait, stop accepting, drain in-flight requests for config.shutdown.grace,
exit).
*/}}
{{- define "waypost.sidecar" -}}
{{- $cfg := include "waypost.configJson" . | fromJson }}
{{- $native := .Values.sidecar.native }}
{{- $kube := "" }}
{{- if .Capabilities }}{{ $kube = .Capabilities.KubeVersion.Version }}{{ end }}
{{- if and $native $kube (semverCompare "<1.29.0-0" $kube) }}
{{- fail (printf "sidecar.native needs Kubernetes >= 1.29 (native sidecar containers); this cluster is %s: set sidecar.native=false" $kube) }}
{{- end }}
{{- $sleep := .Values.sidecar.preStopSleepSeconds | int }}
{{- $preStopSleep := and (not $native) (not .Values.waypost.lifecycle) (gt $sleep 0) }}
{{- if and $preStopSleep $kube (semverCompare "<1.30.0-0" $kube) }}
{{- fail (printf "sidecar.preStopSleepSeconds uses the preStop sleep action, which needs Kubernetes >= 1.30; this cluster is %s: set sidecar.native=true (>= 1.29), or sidecar.preStopSleepSeconds=0 and a waypost.lifecycle of your own" $kube) }}
{{- end }}
{{- $image := .Values.waypost.image }}
- name: waypost
  image: {{ printf "%s:%s" $image.repository ($image.tag | toString) | quote }}
  imagePullPolicy: {{ $image.pullPolicy }}
  {{- if $native }}
  restartPolicy: Always
  {{- end }}
  args: ["run", "--config", "/etc/waypost/config.yaml"]
  ports:
    - name: waypost-admin
      containerPort: {{ $cfg.adminPort }}
      protocol: TCP
  env:
    - name: POD_IP
      valueFrom:
        fieldRef:
          fieldPath: status.podIP
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: POD_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    # The node's IP: where a node-local agent (Consul's) listens.
    - name: HOST_IP
      valueFrom:
        fieldRef:
          fieldPath: status.hostIP
    {{- with .Values.waypost.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.waypost.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.waypost.securityContext | nindent 4 }}
  {{- if $native }}
  startupProbe:
    httpGet:
      path: /ready/outbound
      port: {{ $cfg.adminPort }}
    {{- toYaml .Values.waypost.startupProbe | nindent 4 }}
  {{- end }}
  readinessProbe:
    httpGet:
      path: /ready
      port: {{ $cfg.adminPort }}
    {{- toYaml .Values.waypost.readinessProbe | nindent 4 }}
  livenessProbe:
    httpGet:
      path: /live
      port: {{ $cfg.adminPort }}
    {{- toYaml .Values.waypost.livenessProbe | nindent 4 }}
  {{- if .Values.waypost.lifecycle }}
  lifecycle:
    {{- toYaml .Values.waypost.lifecycle | nindent 4 }}
  {{- else if $preStopSleep }}
  lifecycle:
    preStop:
      sleep:
        seconds: {{ $sleep }}
  {{- end }}
  volumeMounts:
    - name: waypost-config
      mountPath: /etc/waypost
      readOnly: true
    - name: waypost-run
      mountPath: /var/run/waypost
{{- end }}

{{/* The volumes "waypost.sidecar" mounts, as list items for the pod's `volumes`. */}}
{{- define "waypost.sidecarVolumes" -}}
{{- $emptyDir := dict }}
{{- with .Values.waypost.runVolume.medium }}{{ $_ := set $emptyDir "medium" . }}{{ end }}
{{- with .Values.waypost.runVolume.sizeLimit }}{{ $_ := set $emptyDir "sizeLimit" . }}{{ end }}
- name: waypost-config
  configMap:
    name: {{ include "waypost.configMapName" . }}
- name: waypost-run
  emptyDir: {{- if $emptyDir }}{{ toYaml $emptyDir | nindent 4 }}{{ else }} {}{{ end }}
{{- end }}
