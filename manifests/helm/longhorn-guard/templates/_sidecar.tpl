{{/* Strategic merge patch for <longhornNamespace>/longhorn-manager: shareProcessNamespace lets
the agent see longhorn-manager's process (no hostPID needed); the agent inherits the pod's
ServiceAccount. Its serving certificate is the Secret longhorn-guard-agent-tls, which must be
copied into Longhorn's namespace (optional, so a missing copy never keeps longhorn-manager
from starting). The node verdict's Lease goes to the guard's namespace; its thresholds come
from a copy of the ConfigMap longhorn-guard-policy in Longhorn's namespace if there is one
(optional: without it the agent uses the default thresholds). */}}
{{- define "longhorn-guard.sidecarPatch" -}}
spec:
  template:
    spec:
      shareProcessNamespace: true
      containers:
        - name: longhorn-guard-agent
          image: {{ include "longhorn-guard.image" . }}
          imagePullPolicy: {{ .Values.image.pullPolicy }}
          command: [/usr/local/bin/longhorn-guard-agent]
          args:
            - --node=$(NODE_NAME)
            - --namespace={{ .Values.longhornNamespace }}
            - --listen=0.0.0.0:9443
            - --metrics-listen=0.0.0.0:9091
            - --tls-cert=/certs/tls.crt
            - --tls-key=/certs/tls.key
            - --client-ca=/certs/ca.crt
            - --verdict-namespace={{ .Release.Namespace }}
            - --policy-file=/etc/longhorn-guard/policy.yaml
          env:
            - name: NODE_NAME
              valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
            - name: POD_NAME
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
            - {name: LHG_LOG_FORMAT, value: {{ .Values.logFormat }}}
          ports:
            - {name: lhg-grpc, containerPort: 9443, protocol: TCP}
            - {name: lhg-metrics, containerPort: 9091, protocol: TCP}
          livenessProbe:
            httpGet: {path: /healthz, port: lhg-metrics}
            periodSeconds: 10
          readinessProbe:
            httpGet: {path: /readyz, port: lhg-metrics}
            periodSeconds: 10
          resources:
            {{- toYaml .Values.agent.resources | nindent 12 }}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            runAsUser: 0
            capabilities:
              drop: [ALL]
              add: [SYS_PTRACE, DAC_READ_SEARCH]
          volumeMounts:
            - {name: longhorn-guard-agent-tls, mountPath: /certs, readOnly: true}
            - {name: longhorn-grpc-tls, mountPath: /tls-files/, readOnly: true}
            - {name: longhorn-guard-policy, mountPath: /etc/longhorn-guard, readOnly: true}
      volumes:
        - name: longhorn-guard-agent-tls
          secret: {secretName: longhorn-guard-agent-tls, optional: true}
        - name: longhorn-grpc-tls
          secret: {secretName: longhorn-grpc-tls, optional: true}
        - name: longhorn-guard-policy
          configMap: {name: longhorn-guard-policy, optional: true}
{{- end }}
