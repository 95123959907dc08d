{{/* Names, labels and the pieces every component shares. */}}

{{- define "pkgstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pkgstream.fullname" -}}
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

{{/* The component's kebab name: router, search-sink, metrics-sink. */}}
{{- define "pkgstream.componentName" -}}
{{- get (dict "router" "router" "searchSink" "search-sink" "metricsSink" "metrics-sink") . }}
{{- end }}

{{/* Object name of a component: (list $ "searchSink"). */}}
{{- define "pkgstream.componentFullname" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "pkgstream.fullname" $root | trunc 50 | trimSuffix "-") (include "pkgstream.componentName" (index . 1)) }}
{{- end }}

{{- define "pkgstream.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "pkgstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pkgstream
{{- end }}

{{/* Selector labels of a component: (list $ "router"). */}}
{{- define "pkgstream.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "pkgstream.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ include "pkgstream.componentName" (index . 1) }}
{{- end }}

{{- define "pkgstream.componentLabels" -}}
{{ include "pkgstream.labels" (index . 0) }}
app.kubernetes.io/component: {{ include "pkgstream.componentName" (index . 1) }}
{{- end }}

{{- define "pkgstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pkgstream.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pkgstream.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The pipeline TOML: `config:` as the user wrote it, plus what the chart owns
(each stage's metrics_listen on its container port). Nothing else is added,
so every default stays the binary's own.
*/}}
{{- define "pkgstream.pipelineConfig" -}}
{{- $c := deepCopy .Values.config }}
{{- $ports := dict "router" .Values.router.port "search_sink" .Values.searchSink.port "metrics_sink" .Values.metricsSink.port }}
{{- range $section, $port := $ports }}
{{- $s := get $c $section | default (dict) }}
{{- $_ := set $s "metrics_listen" (printf "0.0.0.0:%d" (int $port)) }}
{{- $_ := set $c $section $s }}
{{- end }}
{{- toYaml $c }}
{{- end }}

{{- define "pkgstream.toml" -}}
# pkgstream.toml rendered by the pkgstream chart from `config:` (see
# config/pkgstream.example.toml for every key and its default).
{{- $c := include "pkgstream.pipelineConfig" . | fromYaml }}
{{- range $section, $table := $c }}
{{ include "pkgstream.tomlTable" (list $section $table) }}
{{- end }}
{{- end }}

{{/* One TOML table and its sub-tables: (list "search_sink" $map). */}}
{{- define "pkgstream.tomlTable" -}}
{{- $path := index . 0 }}
{{- $table := index . 1 }}
[{{ $path }}]
{{- range $k, $v := $table }}
{{- if not (kindIs "map" $v) }}
{{ $k }} = {{ include "pkgstream.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := $table }}
{{- if kindIs "map" $v }}
{{ include "pkgstream.tomlTable" (list (printf "%s.%s" $path $k) $v) }}
{{- end }}
{{- end }}
{{- end }}

{{/* A TOML value: strings as JSON strings (valid TOML basic strings), whole numbers without a fraction. */}}
{{- define "pkgstream.tomlValue" -}}
{{- if kindIs "string" . }}{{ toJson . }}
{{- else if kindIs "bool" . }}{{ . }}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) }}{{ if eq (float64 .) (floor .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if kindIs "slice" . }}[{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ include "pkgstream.tomlValue" $v }}{{ end }}]
{{- else }}{{ fail (printf "config: a %s value cannot be written as TOML" (kindOf .)) }}
{{- end }}
{{- end }}

{{/* Whether a secrets.files/env entry applies to a component: (list $entry "router"). */}}
{{- define "pkgstream.secretFor" -}}
{{- $e := index . 0 }}
{{- if or (not $e.components) (has (index . 1) $e.components) }}true{{ end }}
{{- end }}

{{/*
The pod template of a component: (dict "root" $ "component" "router" "args" (list "router")).
*/}}
{{- define "pkgstream.podTemplate" -}}
{{- $root := .root }}
{{- $component := .component }}
{{- $v := get $root.Values $component -}}
metadata:
  labels:
    {{- include "pkgstream.componentLabels" (list $root $component) | nindent 4 }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include "pkgstream.toml" $root | sha256sum }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "pkgstream.serviceAccountName" $root }}
  automountServiceAccountToken: {{ $root.Values.serviceAccount.automountServiceAccountToken }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- $spread := $root.Values.topologySpread }}
  {{- if or $spread.topologyKey $v.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- if $spread.topologyKey }}
    - maxSkew: {{ $spread.maxSkew }}
      topologyKey: {{ $spread.topologyKey }}
      whenUnsatisfiable: {{ $spread.whenUnsatisfiable }}
      labelSelector:
        matchLabels:
          {{- include "pkgstream.selectorLabels" (list $root $component) | nindent 10 }}
    {{- end }}
    {{- with $v.topologySpreadConstraints }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  containers:
    - name: {{ include "pkgstream.componentName" $component }}
      image: {{ include "pkgstream.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args:
        - --config
        - /etc/pkgstream/pkgstream.toml
        {{- range .args }}
        - {{ . }}
        {{- end }}
      env:
        - name: PKGSTREAM_LOG_FORMAT
          value: {{ $root.Values.logFormat | quote }}
        - name: RUST_LOG
          value: {{ $root.Values.logLevel | quote }}
        {{- if eq $component "router" }}
        # Stable across restarts, unique per replica: the pod's name (<statefulset>-<ordinal>).
        - name: PKGSTREAM__ROUTER__TRANSACTIONAL_ID
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- end }}
        {{- range $root.Values.secrets.env }}
        {{- if include "pkgstream.secretFor" (list . $component) }}
        - name: {{ .name }}
          valueFrom:
            secretKeyRef:
              name: {{ .secretName }}
              key: {{ .key }}
        {{- end }}
        {{- end }}
        {{- with $root.Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: metrics
          containerPort: {{ $v.port }}
          protocol: TCP
      livenessProbe:
        httpGet:
          path: /healthz
          port: metrics
        {{- toYaml $root.Values.probes.liveness | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: metrics
        {{- toYaml $root.Values.probes.readiness | nindent 8 }}
      resources:
        {{- toYaml $v.resources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/pkgstream/pkgstream.toml
          subPath: pkgstream.toml
          readOnly: true
        - name: tmp
          mountPath: /tmp
        {{- range $root.Values.secrets.files }}
        {{- if include "pkgstream.secretFor" (list . $component) }}
        - name: secret-{{ .name }}
          mountPath: /etc/pkgstream/secrets/{{ .name }}
          readOnly: true
        {{- end }}
        {{- end }}
        {{- with $root.Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "pkgstream.fullname" $root }}-config
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- range $root.Values.secrets.files }}
    {{- if include "pkgstream.secretFor" (list . $component) }}
    - name: secret-{{ .name }}
      secret:
        secretName: {{ .secretName }}
        defaultMode: 0440
    {{- end }}
    {{- end }}
    {{- with $root.Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}
