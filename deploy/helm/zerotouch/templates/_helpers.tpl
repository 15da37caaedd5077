{{/* Names and labels. */}}
{{- define "zerotouch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "zerotouch.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "zerotouch.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "zerotouch.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "zerotouch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "zerotouch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "zerotouch.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "zerotouch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: zerotouch
{{- end -}}

{{- define "zerotouch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "zerotouch.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "zerotouch.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Where each secret comes from: an existing Secret, or the one the chart makes. */}}
{{- define "zerotouch.databaseSecret" -}}
{{- default (include "zerotouch.fullname" .) .Values.database.existingSecret -}}
{{- end -}}
{{- define "zerotouch.masterKeySecret" -}}
{{- default (include "zerotouch.fullname" .) .Values.masterKey.existingSecret -}}
{{- end -}}
{{- define "zerotouch.caPassphraseSecret" -}}
{{- default (include "zerotouch.fullname" .) .Values.caPassphrase.existingSecret -}}
{{- end -}}
{{- define "zerotouch.tlsSecret" -}}
{{- if .Values.tls.existingSecret -}}
{{- .Values.tls.existingSecret -}}
{{- else -}}
{{- printf "%s-tls" (include "zerotouch.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The Secret the chart makes holds only what was given as a value. */}}
{{- define "zerotouch.chartSecretNeeded" -}}
{{- if or (and .Values.database.url (not .Values.database.existingSecret)) (and .Values.masterKey.value (not .Values.masterKey.existingSecret)) (and .Values.caPassphrase.value (not .Values.caPassphrase.existingSecret)) -}}
true
{{- end -}}
{{- end -}}

{{/* Refuses an install that could not work, naming what is missing. */}}
{{- define "zerotouch.validate" -}}
{{- $missing := list -}}
{{- if not .Values.idScope -}}{{- $missing = append $missing "idScope (0ne + 8 upper-case hex digits, pinned for the life of the installation)" -}}{{- end -}}
{{- if not (or .Values.database.url .Values.database.existingSecret) -}}{{- $missing = append $missing "database.url or database.existingSecret (PostgreSQL)" -}}{{- end -}}
{{- if not (or .Values.masterKey.value .Values.masterKey.existingSecret .Values.masterKey.pkcs11.enabled) -}}{{- $missing = append $missing "masterKey.value, masterKey.existingSecret or masterKey.pkcs11 (openssl rand -base64 32)" -}}{{- end -}}
{{- if not (or .Values.caPassphrase.value .Values.caPassphrase.existingSecret) -}}{{- $missing = append $missing "caPassphrase.value or caPassphrase.existingSecret" -}}{{- end -}}
{{- if not (or .Values.tls.existingSecret .Values.tls.certManager.enabled) -}}{{- $missing = append $missing "tls.existingSecret or tls.certManager.enabled (the server certificate devices trust)" -}}{{- end -}}
{{- if $missing -}}
{{- fail (printf "\n\nzerotouch: set these values:\n  - %s\n(see docs/deploy/kubernetes.md and ci/minimal-values.yaml)" (join "\n  - " $missing)) -}}
{{- end -}}
{{- if and .Values.masterKey.pkcs11.enabled (or .Values.masterKey.value .Values.masterKey.existingSecret) -}}
{{- fail "zerotouch: give one source of the master key: masterKey.value/existingSecret or masterKey.pkcs11" -}}
{{- end -}}
{{- if and .Values.oidc.issuer (not (or .Values.oidc.jwksUrl .Values.oidc.jwksExistingConfigMap .Values.oidc.jwksExistingSecret)) -}}
{{- fail "zerotouch: oidc.issuer needs the issuer's keys: oidc.jwksUrl, oidc.jwksExistingConfigMap or oidc.jwksExistingSecret" -}}
{{- end -}}
{{- $drain := add (int .Values.preStopSleepSeconds) (include "zerotouch.seconds" .Values.settings.shutdownTimeout | int) -}}
{{- if le (int .Values.terminationGracePeriodSeconds) $drain -}}
{{- fail (printf "zerotouch: terminationGracePeriodSeconds (%d) must be longer than preStopSleepSeconds + settings.shutdownTimeout (%d s)" (int .Values.terminationGracePeriodSeconds) $drain) -}}
{{- end -}}
{{- end -}}

{{/* Seconds of a duration written as Ns, Nm or Nh (the forms the schema allows for shutdownTimeout). */}}
{{- define "zerotouch.seconds" -}}
{{- $d := toString . -}}
{{- if hasSuffix "h" $d -}}{{- mul (trimSuffix "h" $d | int) 3600 -}}
{{- else if hasSuffix "m" $d -}}{{- mul (trimSuffix "m" $d | int) 60 -}}
{{- else -}}{{- trimSuffix "s" $d | int -}}
{{- end -}}
{{- end -}}

{{/* Volumes and mounts shared by the Deployment. */}}
{{- define "zerotouch.mountPaths" -}}
dataRoot: /var/lib/zerotouch
dataDir: /var/lib/zerotouch/data
masterKey: /etc/zerotouch/master-key
caPassphrase: /etc/zerotouch/ca-passphrase
tls: /etc/zerotouch/tls
jwks: /etc/zerotouch/jwks
pkcs11Pin: /etc/zerotouch/pkcs11
{{- end -}}
