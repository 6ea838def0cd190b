{{/* Labels every top-level object carries: the kustomize base's two plus Helm's own. */}}
{{- define "longhorn-guard.labels" -}}
app.kubernetes.io/name: longhorn-guard
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{ include "longhorn-guard.helmLabels" .root }}
{{- end }}

{{/* Helm's labels (the equivalence test with the kustomize base ignores exactly these). */}}
{{- define "longhorn-guard.helmLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* Pod and selector labels of a component (no Helm labels: selectors are immutable). */}}
{{- define "longhorn-guard.selector" -}}
{app.kubernetes.io/name: longhorn-guard, app.kubernetes.io/component: {{ . }}}
{{- end }}

{{- define "longhorn-guard.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* nodeSelector and tolerations of a pod: global ones plus the component's. */}}
{{- define "longhorn-guard.placement" -}}
{{- $nodeSelector := merge (deepCopy .component.nodeSelector) .root.Values.global.nodeSelector }}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with concat .component.tolerations .root.Values.global.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The guard's webhook -> agent discovery: agent pods in the guard's namespace, or the
longhorn-manager pods (with the agent as a sidecar) in Longhorn's namespace. */}}
{{- define "longhorn-guard.agentNamespace" -}}
{{- if eq .Values.agent.mode "sidecar" }}{{ .Values.longhornNamespace }}{{ else }}{{ .Release.Namespace }}{{ end }}
{{- end }}
{{- define "longhorn-guard.agentSelector" -}}
{{- if eq .Values.agent.mode "sidecar" }}app=longhorn-manager{{ else }}app.kubernetes.io/name=longhorn-guard,app.kubernetes.io/component=agent{{ end }}
{{- end }}

{{- define "longhorn-guard.monitoringNamespace" -}}
{{ .Values.monitoring.namespace | default .Values.longhornNamespace }}
{{- end }}

{{/* batch/v1 CronJob and policy/v1 PDB are Kubernetes 1.21+; 1.20 serves the v1beta1 (same fields). */}}
{{- define "longhorn-guard.cronJobApiVersion" -}}
{{- if semverCompare "<1.21-0" .Capabilities.KubeVersion.Version }}batch/v1beta1{{ else }}batch/v1{{ end }}
{{- end }}
{{- define "longhorn-guard.pdbApiVersion" -}}
{{- if semverCompare "<1.21-0" .Capabilities.KubeVersion.Version }}policy/v1beta1{{ else }}policy/v1{{ end }}
{{- end }}

{{/* The certs container (bootstrap Job and rotate CronJob): $ is the root, .command the subcommand. */}}
{{- define "longhorn-guard.certsPodSpec" -}}
serviceAccountName: longhorn-guard-certs
restartPolicy: OnFailure
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  seccompProfile: {type: RuntimeDefault}
{{- include "longhorn-guard.placement" (dict "root" .root "component" .root.Values.certs) }}
containers:
  - name: certs
    image: {{ include "longhorn-guard.image" .root }}
    args: [certs, {{ .command }}, --namespace={{ .root.Release.Namespace }}]
    env:
      - {name: LHG_LOG_FORMAT, value: {{ .root.Values.logFormat }}}
    resources:
      {{- toYaml .root.Values.certs.resources | nindent 6 }}
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      runAsNonRoot: true
      capabilities: {drop: [ALL]}
      seccompProfile: {type: RuntimeDefault}
{{- end }}

{{/* The agent's identity for RBAC: its own ServiceAccount, or longhorn-manager's in sidecar mode. */}}
{{- define "longhorn-guard.agentSubject" -}}
{{- if eq .Values.agent.mode "sidecar" -}}
- {kind: ServiceAccount, name: longhorn-service-account, namespace: {{ .Values.longhornNamespace }}}
{{- else -}}
- kind: ServiceAccount
  name: longhorn-guard-agent
  namespace: {{ .Release.Namespace }}
{{- end -}}
{{- end }}
