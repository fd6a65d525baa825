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

{{/* Where the gateway runs and creates trainings: with its scene claim (gateway.yaml). */}}
{{- define "splatops.gatewayNamespace" -}}
{{- default .Release.Namespace .Values.gateway.trainingNamespace -}}
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

{{/* The images spec.image may name (policy.allowedImagePrefixes, default: the trainer's repository), as JSON. */}}
{{- define "splatops.policyImages" -}}
{{- .Values.policy.allowedImagePrefixes | default (list .Values.trainer.image.repository) | toJson -}}
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

{{/* Rules the operator needs in every namespace it watches (Role or ClusterRole): exactly the
  calls of controller/kube.py and kopf, no more (tests/packaging/test_chart.py pins the set;
  test_rbac_runtime.py runs the operator and checks every call it makes against it).
  kopf only ever lists, watches and PATCHes (merge and JSON patch), never GETs or PUTs. */}}
{{- define "splatops.namespacedRules" -}}
# The operator's own resource: kopf lists and watches it; its handlers are level-triggered
# (no kopf progress annotations, no finalizer), so it never writes the resource itself;
# kube.patch_status writes /status (merge patch).
- apiGroups: ["splatops.dev"]
  resources: ["gaussiansplattrainings"]
  verbs: ["list", "watch"]
- apiGroups: ["splatops.dev"]
  resources: ["gaussiansplattrainings/status"]
  verbs: ["patch"]
# Jobs are created with an ownerReference with blockOwnerDeletion: where the
# OwnerReferencesPermissionEnforcement admission plugin runs, that needs update on finalizers.
- apiGroups: ["splatops.dev"]
  resources: ["gaussiansplattrainings/finalizers"]
  verbs: ["update"]
# The trainer Jobs: kopf's index and event handler list/watch them; kube.create_job,
# read_job (the Job a create found already there), patch_job (suspend/admit) and delete_job
# (only a Job that ran out of GPU memory under spec.oom.policy Downscale, to train it again at
# a lower resolution); otherwise the garbage collector removes them with their training.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Trainer pods: kopf's index and event handler list/watch them, kube.job_pods lists them.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# kube.log_tail: the log tail progress is read from.
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# kube.read_pvc: a training's scene PVC must exist before its Job is created.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get"]
# kopf posts its handler outcomes as core v1 Events (POST /api/v1/namespaces/<ns>/events);
# kube.pod_events lists a long-Unschedulable trainer pod's Events (Karpenter's Nominated).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
# kube.kueue_workloads: why Kueue has not admitted a queued training's Job (its Workload's
# conditions, for status.message); a cluster without Kueue answers 404, which is fine.
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["list"]
{{- end -}}

{{/* Ingress peers from a peers block: namespaces by name, pods of the policy's namespace by
  labels, raw peers; none given: every pod of the policy's own namespace. */}}
{{- define "splatops.npPeers" -}}
{{- $peers := list }}
{{- range .allowedNamespaces }}
{{- $peers = append $peers (dict "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" .))) }}
{{- end }}
{{- range .allowedPods }}
{{- $peers = append $peers (dict "podSelector" (dict "matchLabels" .)) }}
{{- end }}
{{- $peers = concat $peers .extraFrom }}
{{- if not $peers }}
{{- $peers = list (dict "podSelector" dict) }}
{{- end }}
{{- toYaml $peers }}
{{- end }}

{{/* Egress: DNS anywhere, and the API server's endpoints (kubelet probes are not affected). */}}
{{- define "splatops.npEgress" -}}
- ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
- ports:
    {{- range .apiServerPorts }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
  {{- with .apiServerCIDRs }}
  to:
    {{- range . }}
    - ipBlock: {cidr: {{ . | quote }}}
    {{- end }}
  {{- end }}
{{- end }}
