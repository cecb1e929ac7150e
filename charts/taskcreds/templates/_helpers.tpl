{{/* Names and labels shared by every template. All helpers are prefixed "taskcreds.". */}}

{{- define "taskcreds.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Object name prefix: the release name, plus the chart name unless the release already has it. */}}
{{- define "taskcreds.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "taskcreds.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "taskcreds.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "taskcreds.selectorLabels" -}}
app.kubernetes.io/name: {{ include "taskcreds.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "taskcreds.labels" -}}
helm.sh/chart: {{ include "taskcreds.chart" . }}
{{ include "taskcreds.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: taskcreds
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of the operator pods and what the Services select. */}}
{{- define "taskcreds.operator.selectorLabels" -}}
{{ include "taskcreds.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "taskcreds.operator.serviceAccountName" -}}
{{- default (printf "%s-operator" (include "taskcreds.fullname" .)) .Values.operator.serviceAccount.name -}}
{{- end -}}

{{- define "taskcreds.webhook.serviceName" -}}{{ include "taskcreds.fullname" . }}-webhook{{- end -}}
{{- define "taskcreds.broker.serviceName" -}}{{ include "taskcreds.fullname" . }}-broker{{- end -}}
{{- define "taskcreds.metrics.serviceName" -}}{{ include "taskcreds.fullname" . }}-metrics{{- end -}}
{{/* The MutatingWebhookConfiguration (cluster-scoped: the release name keeps it unique). */}}
{{- define "taskcreds.webhook.configurationName" -}}{{ include "taskcreds.fullname" . }}{{- end -}}
{{- define "taskcreds.webhook.secretName" -}}{{ include "taskcreds.fullname" . }}-webhook-tls{{- end -}}
{{- define "taskcreds.webhook.certificateName" -}}{{ include "taskcreds.fullname" . }}-webhook{{- end -}}
{{- define "taskcreds.webhook.caCertificateName" -}}{{ include "taskcreds.fullname" . }}-webhook-ca{{- end -}}
{{- define "taskcreds.jwt.secretName" -}}{{ include "taskcreds.fullname" . }}-jwt-keys{{- end -}}
{{- define "taskcreds.configMapName" -}}{{ include "taskcreds.fullname" . }}-config{{- end -}}

{{- define "taskcreds.broker.url" -}}
https://{{ include "taskcreds.broker.serviceName" . }}.{{ .Release.Namespace }}.svc:{{ .Values.broker.service.port }}
{{- end -}}

{{/* The broker's SPIFFE ID, from the same template the operator uses to read sidecars' IDs. */}}
{{- define "taskcreds.broker.spiffeId" -}}
{{- .Values.spiffe.idTemplate | replace "{trust_domain}" .Values.spiffe.trustDomain | replace "{namespace}" .Release.Namespace | replace "{serviceaccount}" (include "taskcreds.operator.serviceAccountName" .) -}}
{{- end -}}

{{- define "taskcreds.jwt.issuer" -}}
{{- default (include "taskcreds.broker.url" .) .Values.broker.jwtIssuer -}}
{{- end -}}

{{/* image reference: digest wins over tag; tag defaults to the appVersion. */}}
{{- define "taskcreds.imageRef" -}}
{{- $repo := index . 0 -}}{{- $tag := index . 1 -}}{{- $digest := index . 2 -}}
{{- if $digest -}}{{ printf "%s@%s" $repo $digest }}{{- else -}}{{ printf "%s:%s" $repo $tag }}{{- end -}}
{{- end -}}

{{- define "taskcreds.operator.image" -}}
{{- include "taskcreds.imageRef" (list .Values.image.repository (default .Chart.AppVersion .Values.image.tag) .Values.image.digest) -}}
{{- end -}}

{{- define "taskcreds.sidecar.image" -}}
{{- $s := .Values.sidecar.image -}}
{{- $repo := default .Values.image.repository $s.repository -}}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) $s.tag -}}
{{- $digest := $s.digest | default (ternary .Values.image.digest "" (empty $s.repository)) -}}
{{- include "taskcreds.imageRef" (list $repo $tag $digest) -}}
{{- end -}}

{{/* Namespaces never sent to the webhook: the release namespace (the operator must never wait on
     itself) and the configured ones. */}}
{{- define "taskcreds.webhook.excludedNamespaces" -}}
{{- $out := list .Release.Namespace -}}
{{- range .Values.webhook.excludeNamespaces -}}{{- if not (has . $out) -}}{{- $out = append $out . -}}{{- end -}}{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* Namespaces whose Secrets the operator reads through Roles (only when rbac.secretNamespaces is set). */}}
{{- define "taskcreds.rbac.secretNamespaces" -}}
{{- $out := list .Release.Namespace -}}
{{- range .Values.rbac.secretNamespaces -}}{{- if not (has . $out) -}}{{- $out = append $out . -}}{{- end -}}{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{- define "taskcreds.webhook.certDir" -}}/var/run/taskcreds/webhook-certs{{- end -}}
{{- define "taskcreds.spiffe.mountPath" -}}/spiffe-workload-api{{- end -}}
{{- define "taskcreds.configDir" -}}/etc/taskcreds{{- end -}}

{{/*
Values that render but would break at runtime: fail at template time, naming the value and what is
accepted. Included once, from operator-deployment.yaml.
*/}}
{{- define "taskcreds.validate" -}}
{{- $o := .Values.operator -}}
{{- $drain := int $o.drainSeconds -}}
{{- $grace := int $o.terminationGracePeriodSeconds -}}
{{- /* the stop after the drain, worst case (operator/main.py stop_seconds, tests/chart/test_values.py):
webhook 10 + broker listener 1 + broker in-flight issue sequences 40 (record 15 + undo 10 + record 15)
+ metrics 1 + kopf 10 + 3 to exit = 65 */ -}}
{{- $stop := 65 -}}
{{- if lt $grace (add $drain $stop | int) -}}
{{- fail (printf "operator.terminationGracePeriodSeconds=%d is too short for operator.drainSeconds=%d: accepted is at least drainSeconds + %d (%d), the worst case of a replica's stop after its drain (webhook 10 s, broker listener 1 s, issue sequences still recording or revoking their credentials 40 s, metrics 1 s, kopf 10 s, exit 3 s) before the kubelet kills it" $grace $drain $stop (add $drain $stop)) -}}
{{- end -}}
{{- $pdb := $o.podDisruptionBudget -}}
{{- if and $pdb.enabled (ge (int $o.replicas) 2) (ge (int $pdb.minAvailable) (int $o.replicas)) -}}
{{- fail (printf "operator.podDisruptionBudget.minAvailable=%d with operator.replicas=%d: no node running an operator pod could ever be drained; accepted is a minAvailable below replicas (default 1), or podDisruptionBudget.enabled=false" (int $pdb.minAvailable) (int $o.replicas)) -}}
{{- end -}}
{{- $mount := .Values.injection.mountPath -}}
{{- $clean := clean $mount -}}
{{- $sidecar := list "/etc/taskcreds/podinfo" "/var/run/secrets/taskcreds" "/spiffe-workload-api" -}}
{{- $accepted := printf "accepted: an absolute path other than / without '..' that neither contains nor lies inside the sidecar's own mounts (%s), for example /run/taskcreds" (join ", " $sidecar) -}}
{{- if or (eq $clean "/") (has ".." (splitList "/" $mount)) -}}
{{- fail (printf "injection.mountPath=%q: %s" $mount $accepted) -}}
{{- end -}}
{{- range $sidecar -}}
{{- if or (eq $clean .) (hasPrefix (printf "%s/" .) $clean) (hasPrefix (printf "%s/" $clean) .) -}}
{{- fail (printf "injection.mountPath=%q overlaps the sidecar's mount %s, so the webhook would deny every opted-in pod; %s" $mount . $accepted) -}}
{{- end -}}
{{- end -}}
{{- $ports := .Values.operator.ports -}}
{{- if ne (len (uniq (list (int $ports.webhook) (int $ports.broker) (int $ports.metrics)))) 3 -}}
{{- fail (printf "operator.ports webhook=%d broker=%d metrics=%d: the operator listens on each, so they must differ; accepted is three distinct ports (default 8443, 8444, 8080)" (int $ports.webhook) (int $ports.broker) (int $ports.metrics)) -}}
{{- end -}}
{{- $sc := .Values.sidecar -}}
{{- if ne (len (uniq (list (int $sc.probePort) (int $sc.localPort) (int $sc.proxyPort)))) 3 -}}
{{- fail (printf "sidecar probePort=%d localPort=%d proxyPort=%d: the sidecar listens on each, so they must differ; accepted is three distinct ports (default 9090, 9091, 9092)" (int $sc.probePort) (int $sc.localPort) (int $sc.proxyPort)) -}}
{{- end -}}
{{- if and .Values.rbac.tokenRequestNamespaces (not .Values.rbac.tokenRequest) -}}
{{- fail "rbac.tokenRequestNamespaces is set but rbac.tokenRequest is false: accepted is rbac.tokenRequest=true with the namespaces listed (one Role each), or neither" -}}
{{- end -}}
{{- end -}}
