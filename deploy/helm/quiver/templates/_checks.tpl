{{/* Values that would install a release that cannot work are refused, saying what to
change. Included (rendering nothing) by data-plane.yaml. */}}
{{- define "quiver.checks" -}}

{{- /* The OpenAI key: in the chart's Secret, or in existingSecret, never dropped. */ -}}
{{- if and .Values.existingSecret .Values.embeddings.openaiApiKey -}}
{{- fail (printf "embeddings.openaiApiKey is not used with existingSecret: put the key in Secret %s as OPENAI_API_KEY, set embeddings.openaiApiKeyInExistingSecret=true and leave embeddings.openaiApiKey empty" .Values.existingSecret) -}}
{{- end -}}
{{- if and .Values.embeddings.openaiApiKeyInExistingSecret (not .Values.existingSecret) -}}
{{- fail "embeddings.openaiApiKeyInExistingSecret reads OPENAI_API_KEY from existingSecret, which is not set: set existingSecret, or give the key as embeddings.openaiApiKey" -}}
{{- end -}}

{{- /* Memory: a pod holds about 256 MiB of its own, about 100 MiB for the local model
and its index budget; restores from snapshots take up to as much again while they run,
and snapshotting an index copies it outside the budget (docs/operations.md, "Index
snapshots"), the largest as large as the budget. The binary refuses a budget under
64 MiB. */ -}}
{{- $limit := ((.Values.dataPlane.resources | default dict).limits | default dict).memory -}}
{{- if $limit -}}
{{- $mib := 1048576 -}}
{{- $overhead := mul 356 $mib -}}
{{- $limitBytes := include "quiver.quantityBytes" (dict "name" "dataPlane.resources.limits.memory" "value" $limit) | int64 -}}
{{- $index := include "quiver.sizeBytes" (dict "name" "dataPlane.indexMemory" "value" .Values.dataPlane.indexMemory) | int64 -}}
{{- if lt $index (mul 64 $mib) -}}
{{- fail (printf "dataPlane.indexMemory %v is too little for vector indexes: Quiver takes at least 64MiB (a namespace of 10,000 384-d vectors weighs about 14 MiB in it)" .Values.dataPlane.indexMemory) -}}
{{- end -}}
{{- $needed := add (mul 3 $index) $overhead -}}
{{- if gt $needed $limitBytes -}}
{{- $fits := div (sub $limitBytes $overhead) (mul 3 $mib) -}}
{{- $lower := ternary (printf "Lower dataPlane.indexMemory to at most %dMiB, or raise" $fits) "Raise" (ge $fits 64) -}}
{{- fail (printf "dataPlane.indexMemory %v does not fit dataPlane.resources.limits.memory %v: a data-plane pod needs three times its index memory (the indexes it holds, restores from snapshots taking up to as much again, and a snapshot's copy of its largest index) plus about 356 MiB (256 MiB for the process, 100 MiB for the local model), or it is OOM-killed. %s the memory limit (and request) to at least %dMi"
    .Values.dataPlane.indexMemory $limit $lower (div (add $needed (sub $mib 1)) $mib)) -}}
{{- end -}}
{{- end -}}

{{- /* Postgres connections: every process (control plane, data-plane pod) holds up to
20 (store/src/postgres.rs). At the peak of a rolling update each Deployment runs a
quarter more pods (Kubernetes's default maxSurge, rounded up); the migrate Job runs, and
exits, before that, beside the old pods alone. */ -}}
{{- $autoscaled := .Values.dataPlane.autoscaling.enabled -}}
{{- $dataName := ternary "dataPlane.autoscaling.maxReplicas" "dataPlane.replicas" $autoscaled -}}
{{- $data := int (ternary .Values.dataPlane.autoscaling.maxReplicas .Values.dataPlane.replicas $autoscaled) -}}
{{- $control := int .Values.controlPlane.replicas -}}
{{- $surge := add (div (add $data 3) 4) (div (add $control 3) 4) -}}
{{- $processes := add $data $control (max $surge 1) -}}
{{- $connections := mul $processes 20 -}}
{{- $allowed := int .Values.postgres.maxConnections -}}
{{- if gt $connections $allowed -}}
{{- fail (printf "%s %d and controlPlane.replicas %d make up to %d Quiver processes during a rolling update (25%% surge), each holding up to 20 Postgres connections: %d, more than postgres.maxConnections %d. Raise Postgres's max_connections and postgres.maxConnections to at least %d, or lower %s"
    $dataName $data $control $processes $connections $allowed $connections $dataName) -}}
{{- end -}}

{{- end -}}
