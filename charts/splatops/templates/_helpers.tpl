{{/* Names and labels. Everything here is a pure function of the values: no random, no time. */}}
{{- define "splatops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "splatops.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "splatops.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "splatops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: splatops
{{- end -}}

{{- define "splatops.operatorSelector" -}}
app.kubernetes.io/name: {{ include "splatops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "splatops.gatewaySelector" -}}
app.kubernetes.io/name: {{ include "splatops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "splatops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "splatops.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "splatops.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) -}}
{{- end -}}

{{- define "splatops.trainerImage" -}}
{{- printf "%s:%s" .Values.trainer.image.repository (default .Chart.AppVersion .Values.trainer.image.tag) -}}
{{- end -}}

{{/* The selected GPU node preset; fails the render with the known names if it does not exist. */}}
{{- define "splatops.gpuPreset" -}}
{{- $preset := get .Values.gpu.presets .Values.gpu.preset -}}
{{- if not $preset -}}
{{- fail (printf "gpu.preset %q is not one of: %s" .Values.gpu.preset (keys .Values.gpu.presets | sortAlpha | join ", ")) -}}
{{- end -}}
{{- toJson $preset -}}
{{- end -}}

{{/* Watching the cluster (ClusterRole, ClusterKopfPeering) or listed namespaces (Roles, KopfPeerings). */}}
{{- define "splatops.clusterwide" -}}
{{- if .Values.watch.namespaces -}}false{{- else -}}true{{- end -}}
{{- end -}}

{{/* Rules the operator needs in every namespace it watches (Role or ClusterRole). */}}
{{- define "splatops.namespacedRules" -}}
# The operator's own resource: reconcile it and write its status.
- apiGroups: ["splatops.dev"]
  resources: ["gaussiansplattrainings"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["splatops.dev"]
  resources: ["gaussiansplattrainings/status"]
  verbs: ["get", "patch", "update"]
# Jobs are created with an ownerReference with blockOwnerDeletion: where the
# OwnerReferencesPermissionEnforcement admission plugin runs, that needs update on finalizers.
- apiGroups: ["splatops.dev"]
  resources: ["gaussiansplattrainings/finalizers"]
  verbs: ["update"]
# The trainer Jobs it creates, and deletes when a training is deleted or suspended.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Trainer pods: phase, termination message, and the log tail it reads progress from.
- apiGroups: [""]
  resources: ["pods", "pods/log"]
  verbs: ["get", "list", "watch"]
# kopf posts its handler outcomes as Events.
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}
