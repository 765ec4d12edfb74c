{{- define "modelship.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "modelship.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "modelship.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelship.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "modelship.labels" -}}
{{ include "modelship.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "modelship.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "modelship.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The operator's rights, the same in a ClusterRole or in each namespace's Role. Each rule is
what the operator's code calls (operator/modelship/operator/client.py and Kopf's watches);
tests/helm/test_rbac_cluster.py runs the operator with nothing more.
*/}}
{{- define "modelship.namespacedRules" -}}
# Kopf watches ModelDeployments; the operator writes their status, and patches the object only
# to take a handled modelship.io/action annotation off (a JSON patch that tests the value first),
# never its spec. RBAC cannot grant metadata without spec: the code and a test hold that line.
- apiGroups: [modelship.io]
  resources: [modeldeployments]
  verbs: [list, watch, patch]
- apiGroups: [modelship.io]
  resources: [modeldeployments/status]
  verbs: [patch]
# Children carry ownerReferences with blockOwnerDeletion, which the
# OwnerReferencesPermissionEnforcement admission plugin allows only with this right.
- apiGroups: [modelship.io]
  resources: [modeldeployments/finalizers]
  verbs: [update]
# Children: server-side apply (patch, and create when the object is new); old revisions'
# Deployments and a dropped HPA are deleted. Services are only ever removed by the garbage collector.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [list, watch, create, patch, delete]
# delete: the per-revision Services of a canary with trafficRouting.gatewayAPI go with their revision.
- apiGroups: [""]
  resources: [services]
  verbs: [list, watch, create, patch, delete]
# A canary with trafficRouting.gatewayAPI sets the weights on the user's HTTPRoute (read, then
# replaced with its resourceVersion); the route is never created or deleted by the operator.
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [get, list, watch, update, patch]
# Pods are observed (readiness, load failures); patch: during a canary's shadow step the stable
# revision's pods get the modelship.io/mirror annotation (where to copy requests to), which their
# server reads from a downwardAPI file. Nothing else of a pod is written.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, patch]
# Kopf posts the operator's decisions as Events.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}
