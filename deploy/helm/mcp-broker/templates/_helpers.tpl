{{/*
Names and labels.
*/}}
{{- define "mcp-broker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mcp-broker.fullname" -}}
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

{{/* Object names of the three components (room is left for the suffixes). */}}
{{- define "mcp-broker.broker.fullname" -}}
{{- include "mcp-broker.fullname" . | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- define "mcp-broker.mcpApp.fullname" -}}
{{- printf "%s-mcp-app" (include "mcp-broker.fullname" . | trunc 44 | trimSuffix "-") }}
{{- end }}
{{- define "mcp-broker.redis.fullname" -}}
{{- printf "%s-redis" (include "mcp-broker.fullname" . | trunc 46 | trimSuffix "-") }}
{{- end }}

{{/* Pull policy of an image value: explicit, else IfNotPresent by digest and Always by tag. */}}
{{- define "mcp-broker.pullPolicy" -}}
{{- .pullPolicy | default (ternary "IfNotPresent" "Always" (not (empty .digest))) }}
{{- end }}

{{- define "mcp-broker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels shared by every object; call with (dict "ctx" $ "component" "broker"). */}}
{{- define "mcp-broker.labels" -}}
helm.sh/chart: {{ include "mcp-broker.chart" .ctx }}
{{ include "mcp-broker.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: mcp-broker
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "mcp-broker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mcp-broker.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "mcp-broker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mcp-broker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference: repository, then @digest when given, else :tag (default appVersion).
Call with (dict "image" .Values.image "ctx" $ "what" "image").
*/}}
{{- define "mcp-broker.image" -}}
{{- $repository := required (printf "%s.repository is required: the image built from deploy/Dockerfile, pushed to your registry" .what) .image.repository }}
{{- $tag := default .ctx.Chart.AppVersion .image.tag | toString }}
{{- if eq $tag "latest" }}
{{- fail (printf "%s.tag must not be 'latest': pin a version (default: the chart's appVersion)" .what) }}
{{- end }}
{{- if .image.digest }}
{{- printf "%s:%s@%s" $repository $tag .image.digest }}
{{- else }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}
{{- end }}

{{/*
Public URLs. The issuer must be an https origin with an optional path and no trailing slash.
*/}}
{{- define "mcp-broker.issuer" -}}
{{- $issuer := required "config.issuer is required: the broker's public https URL, e.g. https://mcp-auth.example.com" .Values.config.issuer }}
{{- if not (hasPrefix "https://" $issuer) }}
{{- fail (printf "config.issuer %q must be an https:// URL (MCP clients require TLS; terminate it at the Ingress)" $issuer) }}
{{- end }}
{{- if hasSuffix "/" $issuer }}
{{- fail (printf "config.issuer %q must not end with '/': clients compare the issuer as an exact string" $issuer) }}
{{- end }}
{{- $issuer }}
{{- end }}

{{- define "mcp-broker.issuerHost" -}}
{{- (urlParse (include "mcp-broker.issuer" .)).host }}
{{- end }}

{{- define "mcp-broker.issuerPath" -}}
{{- (urlParse (include "mcp-broker.issuer" .)).path }}
{{- end }}

{{- define "mcp-broker.resourceUrl" -}}
{{- $url := required "mcpApp.resourceUrl is required with mcpApp.enabled: the MCP server's canonical https URL, e.g. https://mcp.example.com/mcp" .Values.mcpApp.resourceUrl }}
{{- if not (hasPrefix "https://" $url) }}
{{- fail (printf "mcpApp.resourceUrl %q must be an https:// URL" $url) }}
{{- end }}
{{- $found := false }}
{{- range .Values.policy.resources }}
{{- if eq .uri $url }}{{ $found = true }}{{ end }}
{{- end }}
{{- if not $found }}
{{- fail (printf "mcpApp.resourceUrl %q is not the uri of any policy.resources entry: the broker would never issue a token for it" $url) }}
{{- end }}
{{- $url }}
{{- end }}

{{- define "mcp-broker.resourceHost" -}}
{{- (urlParse (include "mcp-broker.resourceUrl" .)).host }}
{{- end }}

{{- define "mcp-broker.resourcePath" -}}
{{- default "/mcp" (urlParse (include "mcp-broker.resourceUrl" .)).path }}
{{- end }}

{{/*
Redis: the URL the apps use, and whether each password is sent.
*/}}
{{- define "mcp-broker.redisUrl" -}}
{{- if .Values.redis.bundled.enabled }}
{{- if .Values.redis.url }}
{{- fail "redis.url must be empty with redis.bundled.enabled: the chart points the apps at its own Redis" }}
{{- end }}
{{- printf "redis://%s.%s.svc:6379/0" (include "mcp-broker.redis.fullname" .) .Release.Namespace }}
{{- else }}
{{- $url := required "redis.url is required: redis://, rediss://, redis+sentinel://h1:26379,h2:26379/mymaster or redis+cluster://h1:6379,h2:6379 (or set redis.bundled.enabled)" .Values.redis.url }}
{{- if regexMatch "://[^/]*@" $url }}
{{- fail "redis.url must not contain credentials: give the password with redis.auth (existingSecret or value)" }}
{{- end }}
{{- $url }}
{{- end }}
{{- end }}

{{- define "mcp-broker.redisTls" -}}
{{- if hasPrefix "rediss" (include "mcp-broker.redisUrl" .) }}true{{ end }}
{{- end }}

{{/*
Secrets. A secret reference is {existingSecret, key} or {value}; the chart's own Secret holds
the values. "mcp-broker.secretKeyRef" renders a secretKeyRef, failing with `what` when the
reference gives neither. Call with (dict "ref" <ref> "what" "secrets.adminToken" "key" "<key in chart Secret>" "ctx" $).
*/}}
{{- define "mcp-broker.secretKeyRef" -}}
{{- if .ref.existingSecret -}}
secretKeyRef:
  name: {{ .ref.existingSecret | quote }}
  key: {{ required (printf "%s.key is required with %s.existingSecret" .what .what) .ref.key | quote }}
{{- else if .ref.value -}}
secretKeyRef:
  name: {{ include "mcp-broker.fullname" .ctx | quote }}
  key: {{ .key | quote }}
{{- else }}
{{- fail (printf "%s is required: set %s.existingSecret (the name of a Secret you manage, with the key in %s.key) or %s.value (the chart then creates the Secret)" .what .what .what .what) }}
{{- end }}
{{- end }}

{{/* True when the key encryption key is configured or required. */}}
{{- define "mcp-broker.kekEnabled" -}}
{{- $kek := .Values.secrets.keyEncryptionKey }}
{{- if or (not .Values.signing.keysSecret) $kek.existingSecret $kek.value }}true{{ end }}
{{- end }}

{{/*
Values the chart writes into its own Secret, as a dict of key -> value.
*/}}
{{- define "mcp-broker.secretData" -}}
{{- $data := dict }}
{{- $kek := .Values.secrets.keyEncryptionKey }}
{{- if and (include "mcp-broker.kekEnabled" .) (not $kek.existingSecret) $kek.value }}
{{- $_ := set $data $kek.key $kek.value }}
{{- end }}
{{- $admin := .Values.secrets.adminToken }}
{{- if and $admin.enabled (not $admin.existingSecret) $admin.value }}
{{- if lt (len $admin.value) 32 }}
{{- fail "secrets.adminToken.value must be at least 32 characters" }}
{{- end }}
{{- $_ := set $data $admin.key $admin.value }}
{{- end }}
{{- range $ref := list .Values.redis.auth .Values.redis.sentinelAuth }}
{{- if and $ref.enabled (not $ref.existingSecret) $ref.value }}
{{- $_ := set $data $ref.key $ref.value }}
{{- end }}
{{- end }}
{{- range $name, $ref := .Values.secrets.env }}
{{- if and (not $ref.existingSecret) $ref.value }}
{{- $_ := set $data $name $ref.value }}
{{- end }}
{{- end }}
{{- toYaml $data }}
{{- end }}

{{/*
The broker's secret environment: every variable the configuration files may reference.
*/}}
{{- define "mcp-broker.broker.secretEnv" -}}
{{- if include "mcp-broker.kekEnabled" . }}
- name: MCPB_KEY_ENCRYPTION_KEY
  valueFrom:
    {{- include "mcp-broker.secretKeyRef" (dict "ref" .Values.secrets.keyEncryptionKey "what" "secrets.keyEncryptionKey" "key" .Values.secrets.keyEncryptionKey.key "ctx" .) | nindent 4 }}
{{- end }}
{{- if .Values.secrets.adminToken.enabled }}
- name: MCPB_ADMIN_TOKEN
  valueFrom:
    {{- include "mcp-broker.secretKeyRef" (dict "ref" .Values.secrets.adminToken "what" "secrets.adminToken" "key" .Values.secrets.adminToken.key "ctx" .) | nindent 4 }}
{{- end }}
{{- if .Values.redis.auth.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    {{- include "mcp-broker.secretKeyRef" (dict "ref" .Values.redis.auth "what" "redis.auth" "key" .Values.redis.auth.key "ctx" .) | nindent 4 }}
{{- end }}
{{- if .Values.redis.sentinelAuth.enabled }}
- name: REDIS_SENTINEL_PASSWORD
  valueFrom:
    {{- include "mcp-broker.secretKeyRef" (dict "ref" .Values.redis.sentinelAuth "what" "redis.sentinelAuth" "key" .Values.redis.sentinelAuth.key "ctx" .) | nindent 4 }}
{{- end }}
{{- range $name, $ref := .Values.secrets.env }}
- name: {{ $name }}
  valueFrom:
    {{- include "mcp-broker.secretKeyRef" (dict "ref" $ref "what" (printf "secrets.env.%s" $name) "key" $name "ctx" $) | nindent 4 }}
{{- end }}
{{- end }}

{{/*
broker.yaml: the user's `config` plus the keys the chart manages.
*/}}
{{- define "mcp-broker.brokerConfig" -}}
{{- $config := deepCopy .Values.config }}
{{- $_ := set $config "issuer" (include "mcp-broker.issuer" .) }}
{{- $server := deepCopy (default dict $config.server) }}
{{- $_ = set $server "host" "0.0.0.0" }}
{{- $_ = set $server "port" (int .Values.broker.containerPort) }}
{{- $_ = set $config "server" $server }}
{{- $redis := dict "url" (include "mcp-broker.redisUrl" .) "key_prefix" .Values.redis.keyPrefix "socket_timeout" .Values.redis.socketTimeout }}
{{- if .Values.redis.auth.enabled }}
{{- $_ = set $redis "password" "${REDIS_PASSWORD}" }}
{{- end }}
{{- if .Values.redis.sentinelAuth.enabled }}
{{- $_ = set $redis "sentinel_password" "${REDIS_SENTINEL_PASSWORD}" }}
{{- end }}
{{- if .Values.redis.tls.caSecret }}
{{- $_ = set $redis "ca_file" (printf "/etc/mcp-broker/redis-ca/%s" .Values.redis.tls.caKey) }}
{{- end }}
{{- $_ = set $config "redis" $redis }}
{{- $signing := deepCopy (default dict $config.signing) }}
{{- if include "mcp-broker.kekEnabled" . }}
{{- $_ = set $signing "key_encryption_key" "${MCPB_KEY_ENCRYPTION_KEY}" }}
{{- end }}
{{- if .Values.signing.keysSecret }}
{{- $_ = set $signing "keys_dir" "/etc/mcp-broker/signing-keys" }}
{{- end }}
{{- $_ = set $config "signing" $signing }}
{{- if .Values.secrets.adminToken.enabled }}
{{- $_ = set $config "admin" (dict "token" "${MCPB_ADMIN_TOKEN}") }}
{{- end }}
{{- $_ = set $config "metrics" (dict "enabled" .Values.metrics.enabled "port" (int .Values.metrics.port)) }}
{{- $_ = set $config "policy_file" "/etc/mcp-broker/policy/policy.yaml" }}
{{- range $key, $value := deepCopy $config }}
{{- if and (kindIs "map" $value) (empty $value) }}
{{- $_ = unset $config $key }}
{{- end }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{- define "mcp-broker.policy" -}}
{{- toYaml (dict "resources" .Values.policy.resources "mappings" .Values.policy.mappings) }}
{{- end }}

{{/*
Every ${NAME} in broker.yaml and the policy file must be set in the broker's environment
(`$$` is a literal dollar sign; ${NAME:-default} needs nothing).
*/}}
{{- define "mcp-broker.checkEnvReferences" -}}
{{- $text := printf "%s\n%s" (include "mcp-broker.brokerConfig" .) (include "mcp-broker.policy" .) | replace "$$" "" }}
{{- $known := list "MCPB_KEY_ENCRYPTION_KEY" "MCPB_ADMIN_TOKEN" "REDIS_PASSWORD" "REDIS_SENTINEL_PASSWORD" }}
{{- range $name, $_ := .Values.secrets.env }}{{ $known = append $known $name }}{{ end }}
{{- range .Values.broker.extraEnv }}{{ $known = append $known .name }}{{ end }}
{{- range $ref := regexFindAll "\\$\\{[A-Za-z_][A-Za-z0-9_]*\\}" $text -1 }}
{{- $name := trimSuffix "}" (trimPrefix "${" $ref) }}
{{- if not (has $name $known) }}
{{- fail (printf "the broker configuration refers to ${%s}, but no environment variable %s is set: add it under secrets.env (a secret) or broker.extraEnv" $name $name) }}
{{- end }}
{{- end }}
{{- end }}

{{/* True when an LDAP provider is configured. */}}
{{- define "mcp-broker.hasLdap" -}}
{{- range .Values.config.providers }}{{ if eq .type "ldap" }}true{{ end }}{{ end }}
{{- end }}

{{/*
Topology spread constraints with the component's labelSelector filled in.
Call with (dict "constraints" <list> "ctx" $ "component" "broker").
*/}}
{{- define "mcp-broker.topologySpread" -}}
{{- $selector := fromYaml (include "mcp-broker.selectorLabels" (dict "ctx" .ctx "component" .component)) }}
{{- $out := list }}
{{- range .constraints }}
{{- $c := deepCopy . }}
{{- if not $c.labelSelector }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $selector) }}
{{- end }}
{{- $out = append $out $c }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* The metrics port as a NetworkPolicy ingress rule from Prometheus. */}}
{{- define "mcp-broker.metricsIngressRule" -}}
{{- if .Values.metrics.enabled -}}
- from:
    - {{ toYaml .Values.networkPolicy.prometheus | nindent 6 | trim }}
  ports:
    - port: metrics
      protocol: TCP
{{- end }}
{{- end }}

{{/* DNS egress. */}}
{{- define "mcp-broker.dnsEgressRule" -}}
- to:
    - {{ toYaml .Values.networkPolicy.dns | nindent 6 | trim }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end }}

{{/* Redis egress: the bundled Redis pods, or the external Redis peers and ports. */}}
{{- define "mcp-broker.redisEgressRule" -}}
{{- if .Values.redis.bundled.enabled -}}
- to:
    - podSelector:
        matchLabels:
          {{- include "mcp-broker.selectorLabels" (dict "ctx" . "component" "redis") | nindent 10 }}
  ports:
    - port: 6379
      protocol: TCP
{{- else -}}
{{- include "mcp-broker.egressRule" .Values.networkPolicy.redis }}
{{- end }}
{{- end }}

{{/* Egress to a list of peers on a list of TCP ports; call with the egressTarget value. */}}
{{- define "mcp-broker.egressRule" -}}
- ports:
    {{- range .ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with .to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* Probe timings merged into an httpGet probe. Call with (dict "path" "/healthz" "timing" <dict>). */}}
{{- define "mcp-broker.probe" -}}
httpGet:
  path: {{ .path }}
  port: http
{{- toYaml .timing | nindent 0 }}
{{- end }}

{{/*
Cross-checks that the schema cannot express. Rendered (as nothing) by configmap.yaml.
*/}}
{{- define "mcp-broker.validate" -}}
{{- $_ := include "mcp-broker.issuer" . }}
{{- $_ = include "mcp-broker.redisUrl" . }}
{{- $_ = include "mcp-broker.image" (dict "image" .Values.image "ctx" . "what" "image") }}
{{- $_ = include "mcp-broker.broker.secretEnv" . }}
{{- include "mcp-broker.checkEnvReferences" . }}
{{- if and .Values.redis.bundled.enabled (not .Values.redis.auth.enabled) }}
{{- fail "redis.auth.enabled must be true with redis.bundled.enabled: the bundled Redis always requires a password" }}
{{- end }}
{{- if and .Values.redis.bundled.enabled .Values.redis.auth.value (not (regexMatch "^[A-Za-z0-9+/=._~-]{16,}$" .Values.redis.auth.value)) }}
{{- fail "redis.auth.value for the bundled Redis must be at least 16 characters of A-Z a-z 0-9 + / = . _ ~ -" }}
{{- end }}
{{- if and .Values.redis.bundled.enabled .Values.redis.sentinelAuth.enabled }}
{{- fail "redis.sentinelAuth is for an external Redis Sentinel; the bundled Redis is a single node" }}
{{- end }}
{{- range $i, $p := .Values.config.providers }}
{{- if and $p.use_upstream_refresh (not (include "mcp-broker.kekEnabled" $)) }}
{{- fail (printf "config.providers[%d] (%s) has use_upstream_refresh, which needs secrets.keyEncryptionKey: upstream refresh tokens are kept only encrypted" $i ($p.id | default "?")) }}
{{- end }}
{{- end }}
{{- if .Values.mcpApp.enabled }}
{{- $_ = include "mcp-broker.resourceUrl" . }}
{{- if and (eq (include "mcp-broker.resourceHost" .) (include "mcp-broker.issuerHost" .)) (eq (include "mcp-broker.resourcePath" .) (default "/" (include "mcp-broker.issuerPath" .))) }}
{{- fail "mcpApp.resourceUrl and config.issuer share host and path: give the MCP server a path of its own (e.g. /mcp)" }}
{{- end }}
{{- end }}
{{- end }}
