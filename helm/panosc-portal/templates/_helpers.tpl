{{/* Names ------------------------------------------------------------------------------ */}}

{{- define "panosc-portal.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "panosc-portal.hub" -}}{{ include "panosc-portal.fullname" . }}-hub{{- end -}}
{{- define "panosc-portal.proxy" -}}{{ include "panosc-portal.fullname" . }}-proxy{{- end -}}
{{- define "panosc-portal.proxyApi" -}}{{ include "panosc-portal.fullname" . }}-proxy-api{{- end -}}
{{- define "panosc-portal.proxyPublic" -}}{{ include "panosc-portal.fullname" . }}-proxy-public{{- end -}}

{{/* Labels: the recommended app.kubernetes.io set; "component" names the part. User pods
     carry app.kubernetes.io/name=panosc-portal and app.kubernetes.io/instance from the
     spawner (spawner.kube.pod_labels below) and app.kubernetes.io/component=singleuser-server
     from kubespawner. */}}

{{- define "panosc-portal.selectorLabels" -}}
app.kubernetes.io/name: panosc-portal
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "panosc-portal.labels" -}}
{{ include "panosc-portal.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Images: images/environments.yaml (files/environments.yaml links to it) is the one table. */}}

{{- define "panosc-portal.table" -}}
{{- .Files.Get "files/environments.yaml" | fromYaml | toJson -}}
{{- end -}}

{{/* An image of the table: {version} becomes appVersion, the site's registry goes first. */}}
{{- define "panosc-portal.tableImage" -}}
{{- $image := replace "{version}" .root.Chart.AppVersion .image -}}
{{- with .root.Values.portal.environments.imageRegistry -}}
{{- printf "%s/%s" (trimSuffix "/" .) $image -}}
{{- else -}}
{{- $image -}}
{{- end -}}
{{- end -}}

{{/* Environments' images, in the table's order, as a JSON list of {name, image}. */}}
{{- define "panosc-portal.environmentImages" -}}
{{- $images := list -}}
{{- range (include "panosc-portal.table" . | fromJson).environments -}}
{{- $images = append $images (dict "name" .name "image" (include "panosc-portal.tableImage" (dict "root" $ "image" .image))) -}}
{{- end -}}
{{- toJson $images -}}
{{- end -}}

{{/* The pre-puller's groups: environments whose pods may run on the same nodes, as a JSON
     list of {name, nodeSelector, tolerations, images}. An environment whose override in
     portal.environments.overrides sets node_selector or tolerations (a GPU environment) is
     pulled only onto the nodes its servers may use (its node_selector, as for its pods);
     the others onto prePuller.nodeSelector's nodes. */}}
{{- define "panosc-portal.pullGroups" -}}
{{- $groups := dict -}}
{{- $order := list -}}
{{- $everywhere := toJson (list (merge (dict) .Values.prePuller.nodeSelector) (concat .Values.prePuller.tolerations list)) -}}
{{- range include "panosc-portal.environmentImages" . | fromJsonArray -}}
{{- $override := get $.Values.portal.environments.overrides .name | default dict -}}
{{- $selector := $override.node_selector | default $.Values.prePuller.nodeSelector | default dict -}}
{{- $tolerations := concat $.Values.prePuller.tolerations ($override.tolerations | default list) -}}
{{- $key := toJson (list $selector $tolerations) -}}
{{- if not (hasKey $groups $key) -}}
{{- $name := ternary "" (printf "-%s" .name) (eq $key $everywhere) -}}
{{- $_ := set $groups $key (dict "name" $name "nodeSelector" $selector "tolerations" $tolerations "images" list) -}}
{{- $order = append $order $key -}}
{{- end -}}
{{- $group := get $groups $key -}}
{{- $_ := set $group "images" (append $group.images .) -}}
{{- end -}}
{{- $list := list -}}
{{- range $order -}}{{- $list = append $list (get $groups .) -}}{{- end -}}
{{- toJson $list -}}
{{- end -}}

{{/* An image value {name, tag} defaulting to the table's image `service` (hub or proxy). */}}
{{- define "panosc-portal.image" -}}
{{- $table := get (include "panosc-portal.table" .root | fromJson) .service -}}
{{- $default := include "panosc-portal.tableImage" (dict "root" .root "image" $table.image) -}}
{{- $name := default (regexReplaceAll ":[^:/]+$" $default "") .image.name -}}
{{- $tag := default (regexFind "[^:/]+$" $default) .image.tag -}}
{{- printf "%s:%s" $name $tag -}}
{{- end -}}

{{/* URLs */}}

{{- define "panosc-portal.publicUrl" -}}
{{- if .Values.portal.publicUrl -}}
{{- .Values.portal.publicUrl -}}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts -}}
{{- printf "https://%s%s" (first .Values.ingress.hosts) .Values.hub.baseUrl -}}
{{- end -}}
{{- end -}}

{{/* Secrets: generated once, then kept. On an upgrade, lookup finds the Secret of the
     installed release and its values are reused; only a first install (or `helm template`,
     which cannot look anything up: Argo CD, Flux's post-renderers; set hub.existingSecret
     there) generates new ones. 32 random bytes, hex: what JUPYTERHUB_CRYPT_KEY and
     JPY_COOKIE_SECRET expect. Returns the base64 data value. */}}
{{- define "panosc-portal.keptSecret" -}}
{{- /* One value per key and render: the Secret and the checksums of the pods that read it
       must see the same one, or the first upgrade would restart them for nothing. */ -}}
{{- if not (hasKey .root.Values "_keptSecrets") -}}
{{- $_ := set .root.Values "_keptSecrets" dict -}}
{{- end -}}
{{- $cache := .root.Values._keptSecrets -}}
{{- if not (hasKey $cache .key) -}}
{{- $installed := lookup "v1" "Secret" .root.Release.Namespace (include "panosc-portal.hub" .root) -}}
{{- $kept := dig "data" .key "" $installed -}}
{{- $_ := set $cache .key (default (sha256sum (randAlphaNum 64) | b64enc) $kept) -}}
{{- end -}}
{{- get $cache .key -}}
{{- end -}}

{{/* Security contexts: non-root, no privilege escalation, no capability, RuntimeDefault
     seccomp, read-only root filesystem. */}}

{{- define "panosc-portal.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .gid }}
fsGroup: {{ .gid }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "panosc-portal.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The hub's portal.yaml ------------------------------------------------------------------ */}}

{{- define "panosc-portal.portalYaml" -}}
{{- $v := .Values -}}
{{- $hub := dict "ip" "0.0.0.0" "port" 8000 "base_url" $v.hub.baseUrl "state_dir" "/srv/jupyterhub" "admin_users" $v.hub.adminUsers "admin_access" $v.hub.adminAccess -}}
{{- with include "panosc-portal.publicUrl" . -}}{{- $_ := set $hub "public_url" . -}}{{- end -}}
{{- if eq $v.hub.db.type "postgres" -}}{{- $_ := set $hub "db_url" $v.hub.db.url -}}{{- end -}}
{{- $roots := dict -}}
{{- $volumes := dict -}}
{{- range $v.portal.storage.roots -}}
{{- $_ := set $roots .prefix .path -}}
{{- $_ := set $volumes .path .volume -}}
{{- end -}}
{{- $home := dict "capacity" $v.singleuser.storage.capacity "access_modes" $v.singleuser.storage.accessModes -}}
{{- with $v.singleuser.storage.storageClass -}}{{- $_ := set $home "storage_class" . -}}{{- end -}}
{{- $pullSecrets := list -}}
{{- range $v.singleuser.image.pullSecrets -}}{{- $pullSecrets = append $pullSecrets . -}}{{- end -}}
{{- $kube := dict
      "hub_api_port" 8081
      "hub_connect_url" (printf "http://%s:8081" (include "panosc-portal.hub" .))
      "proxy_api_url" (printf "http://%s:8001" (include "panosc-portal.proxyApi" .))
      "storage_volumes" $volumes
      "home" $home
      "image_registry" $v.portal.environments.imageRegistry
      "image_pull_policy" $v.singleuser.image.pullPolicy
      "image_pull_secrets" $pullSecrets
      "start_timeout" (int $v.singleuser.startTimeout)
      "guarantee_fraction" $v.singleuser.guaranteeFraction
      "pod_labels" (dict "app.kubernetes.io/instance" .Release.Name)
      "profile_overrides" $v.portal.environments.overrides -}}
{{- $spawner := dict
      "backend" "kube"
      "storage_roots" $roots
      "default_datasets" $v.portal.defaultDatasets
      "named_server_limit" (int $v.portal.namedServerLimit)
      "audit_interval" $v.portal.auditInterval
      "kube" $kube -}}
{{- with $v.portal.storage.processed -}}
{{- $_ := set $spawner "processed_root" .path -}}
{{- $_ := set $volumes .path .volume -}}
{{- end -}}
{{- $cull := dict "enabled" $v.cull.enabled "timeout" (int $v.cull.timeout) "every" (int $v.cull.every) "max_age" (int $v.cull.maxAge) -}}
{{- $config := dict "hub" $hub "cull" $cull "auth" $v.portal.auth "catalogue" $v.portal.catalogue "spawner" $spawner -}}
{{- with $v.portal.branding -}}{{- $_ := set $config "branding" . -}}{{- end -}}
{{- with $v.sharing -}}{{- $_ := set $config "sharing" (dict "support_groups" (.supportGroups | default list) "auth_cache" (int (.authCache | default 30))) -}}{{- end -}}
{{- with $v.hub.extraConfig -}}{{- $_ := set $config "extra_config" . -}}{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* The Secret holding the three generated keys: the site's (hub.existingSecret) or the chart's. */}}
{{- define "panosc-portal.keysSecret" -}}
{{- default (include "panosc-portal.hub" .) .Values.hub.existingSecret -}}
{{- end -}}

{{/* Probes: Zero to JupyterHub's values. Readiness is asked every 2 s and never gives up, so
     a pod serves as soon as it answers; liveness allows a slow first start (OIDC discovery,
     waiting for the proxy, indexing a local catalogue) and 30 missed checks of 3 s before a
     restart, so a slow storage moment does not kill a hub in the middle of spawns. */}}
{{- define "panosc-portal.probes" -}}
readinessProbe:
  httpGet:
    path: {{ .path }}
    port: http
  initialDelaySeconds: 0
  periodSeconds: 2
  timeoutSeconds: 1
  failureThreshold: 1000
livenessProbe:
  httpGet:
    path: {{ .path }}
    port: http
  initialDelaySeconds: {{ .startSeconds }}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 30
{{- end -}}
