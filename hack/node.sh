# shellcheck shell=bash
# A real worker node for hack/cluster.sh (sourced after hack/lib.sh and hack/run.sh): containerd +
# runc + CNI bridge, a kubelet and kube-proxy, registered with the local control plane as node
# "${REAL_NODE_NAME}". Pods run for real, in network namespaces on the bridge ${NODE_BRIDGE}.
# See docs/local-cluster.md ("A real node").
#
# Host-wide state a node changes, all undone by node_down:
#   sysctls (saved in $NODE/sysctl.saved, restored), the bridge ${NODE_BRIDGE}, the nftables table
#   ${NODE_NFT_TABLE} (egress guard + API server DNAT), kube-proxy's iptables chains
#   (kube-proxy --cleanup), the /kubepods cgroups, mounts under $NODE and /run/containerd, network
#   namespaces in /run/netns, and host folders the kubelet/containerd/CNI create when missing
#   (/var/log/containers, /var/lib/cni, /run/containerd, ...).
# These paths are global, so only ONE real node may run on a machine: the owner file
# ${NODE_OWNER_FILE} names the cluster dir that holds it, and `node_up` refuses while that one runs.

NODE="${STATE}/node"
REAL_NODE_NAME="${ELASTISERVE_REAL_NODE_NAME:-elastiserve-node}"
NODE_BRIDGE="es-cni0"
NODE_NFT_TABLE="elastiserve_node"
NODE_OWNER_FILE="/run/elastiserve-real-node.owner"
# Pods of the real node; kwok's fake pods use 10.244.0.0/16 (kwok --cidr).
POD_CIDR="${ELASTISERVE_POD_CIDR:-10.250.0.0/24}"
NODE_GATEWAY="${POD_CIDR%.*}.1"
NODE_COMPONENTS=(containerd kube-proxy kubelet coredns metrics-server)
# Cluster DNS: CoreDNS on the bridge address behind the kube-dns Service (the kubelet's clusterDNS).
CLUSTER_DNS_IP="${ELASTISERVE_CLUSTER_DNS_IP:-10.96.0.10}"
CLUSTER_DOMAIN="cluster.local"
# How often metrics-server scrapes the kubelet's /metrics/resource (its minimum is 10s; default 60s):
# the HPA sees a pod's CPU that much later.
METRICS_RESOLUTION="${ELASTISERVE_METRICS_RESOLUTION:-15s}"
# CPU and memory the node keeps for the control plane, the kubelet and everything else on the
# machine (2 cores shared with the build, Prometheus and the tests): pods get what is left.
NODE_SYSTEM_RESERVED_CPU="${ELASTISERVE_NODE_SYSTEM_RESERVED_CPU:-500m}"
NODE_KUBE_RESERVED_CPU="${ELASTISERVE_NODE_KUBE_RESERVED_CPU:-500m}"
NODE_POD_MEMORY_MI="${ELASTISERVE_NODE_POD_MEMORY_MI:-4096}"
NODE_KUBE_RESERVED_MEMORY_MI=512
# Sysctls the kubelet (setupKernelTunables), kube-proxy, the bridge CNI plugin and we may change.
NODE_SYSCTLS=(
  kernel.panic kernel.panic_on_oops vm.overcommit_memory vm.panic_on_oom
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes
  net.ipv4.ip_forward net.ipv4.conf.all.route_localnet
  net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
  net.netfilter.nf_conntrack_tcp_timeout_close_wait
)
# Host folders created on demand by the kubelet, containerd or CNI (hard-coded there): removed on
# down when they did not exist before up.
NODE_HOST_DIRS=(/var/log/containers /var/log/pods /var/lib/cni /run/netns /run/containerd /var/lib/kubelet /etc/cni /opt/cni)

CNI_BIN_DIR="${ELASTISERVE_CNI_BIN_DIR:-/usr/lib/cni}"
NODE_SOCK() { printf '%s/containerd/containerd.sock' "${NODE}"; }
nctr() { ctr --address "$(NODE_SOCK)" -n k8s.io "$@"; }
ncrictl() { "$(CRICTL_BIN)" --runtime-endpoint "unix://$(NODE_SOCK)" --image-endpoint "unix://$(NODE_SOCK)" --timeout 30s "$@"; }

node_present() { [[ -d "${NODE}" ]]; }

node_alive() {
  local c
  for c in "${NODE_COMPONENTS[@]}"; do alive "${c}" || return 1; done
  return 0
}

# ---------------------------------------------------------------- preflight / ownership

node_preflight() {
  [[ "$(id -u)" -eq 0 ]] || die "a real node needs root (containerd, cgroups, network namespaces)"
  local b
  for b in "$(KUBELET_BIN)" "$(KUBE_PROXY_BIN)" "$(CRICTL_BIN)" "$(COREDNS_BIN)" "$(METRICS_SERVER_BIN)"; do
    [[ -x "${b}" ]] || die "missing ${b}: run 'hack/cluster.sh build-node' first"
  done
  for b in containerd containerd-shim-runc-v2 ctr runc nft iptables ip gcc buildah; do
    command -v "${b}" >/dev/null 2>&1 || die "'${b}' is missing: run hack/install-node-deps.sh"
  done
  for b in bridge host-local loopback portmap; do
    [[ -x "${CNI_BIN_DIR}/${b}" ]] || die "CNI plugin ${CNI_BIN_DIR}/${b} is missing: run hack/install-node-deps.sh"
  done
  [[ -d /sys/fs/cgroup/memory && -d /sys/fs/cgroup/cpu ]] ||
    die "cgroup v1 memory and cpu controllers are not mounted under /sys/fs/cgroup"
  [[ -d /proc/sys/net/bridge ]] || modprobe br_netfilter 2>/dev/null ||
    die "br_netfilter is not available (no /proc/sys/net/bridge): Service traffic between pods needs it"
}

# Refuse when another cluster's real node runs on this machine; take over a stale owner file.
node_claim() {
  if [[ -f "${NODE_OWNER_FILE}" ]]; then
    local other
    other=$(cat "${NODE_OWNER_FILE}")
    if [[ "${other}" != "${STATE}" ]]; then
      local pid
      for pid in $(cat "${other}"/pids/{containerd,kubelet,kube-proxy}.pid 2>/dev/null); do
        if [[ -r "/proc/${pid}/cmdline" ]] && tr '\0' ' ' <"/proc/${pid}/cmdline" | grep -qF "${other}/"; then
          die "another real node runs on this machine (cluster dir ${other}); only one can (host-wide paths: /run/containerd, /var/lib/cni, /kubepods cgroups): stop it with ELASTISERVE_CLUSTER_DIR=${other} hack/cluster.sh down"
        fi
      done
      log "taking over a stale real-node claim of ${other}"
    fi
  fi
  if [[ -S /run/containerd/containerd.sock ]] && ! ls "${NODE}"/containerd/containerd.sock >/dev/null 2>&1; then
    if ctr --address /run/containerd/containerd.sock version >/dev/null 2>&1; then
      die "a containerd not started by elastiserve serves /run/containerd/containerd.sock; a real node cannot run beside it"
    fi
  fi
  if ip link show "${NODE_BRIDGE}" >/dev/null 2>&1 && [[ ! -f "${NODE}/bridge.created" ]]; then
    die "network interface ${NODE_BRIDGE} exists and is not ours; remove it ('ip link del ${NODE_BRIDGE}') or stop the node that made it"
  fi
  printf '%s\n' "${STATE}" >"${NODE_OWNER_FILE}"
}

# ---------------------------------------------------------------- host state: record / restore

node_record_host() {
  local s v d
  : >"${NODE}/sysctl.saved"
  for s in "${NODE_SYSCTLS[@]}"; do
    v=$(sysctl -n "${s}" 2>/dev/null) || continue
    printf '%s=%s\n' "${s}" "${v}" >>"${NODE}/sysctl.saved"
  done
  if { iptables-save 2>/dev/null; ip6tables-save 2>/dev/null; } | grep -q '^:KUBE-'; then
    touch "${NODE}/iptables.preexisting"
  fi
  : >"${NODE}/hostdirs.created"
  for d in "${NODE_HOST_DIRS[@]}"; do
    [[ -e "${d}" ]] || printf '%s\n' "${d}" >>"${NODE}/hostdirs.created"
  done
}

# The kubelet's own iptables chains (kube-proxy --cleanup leaves them): KUBE-FIREWALL with its
# INPUT/OUTPUT jumps, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT. Removed on down unless some existed
# before up (then another Kubernetes owns them).
node_iptables_cleanup() {
  [[ -f "${NODE}/iptables.preexisting" ]] && return 0
  local ipt table chain
  for ipt in iptables ip6tables; do
    command -v "${ipt}" >/dev/null 2>&1 || continue
    while "${ipt}" -w -D INPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
    while "${ipt}" -w -D OUTPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
    for table in filter nat mangle; do
      for chain in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT; do
        "${ipt}" -w -t "${table}" -F "${chain}" 2>/dev/null || continue
        "${ipt}" -w -t "${table}" -X "${chain}" 2>/dev/null || log "could not delete ${ipt} ${table} ${chain}"
      done
    done
  done
}

node_restore_sysctls() {
  [[ -f "${NODE}/sysctl.saved" ]] || return 0
  local line
  while IFS= read -r line; do
    [[ -n "${line}" ]] || continue
    sysctl -q -w "${line}" >/dev/null 2>&1 || log "could not restore sysctl ${line}"
  done <"${NODE}/sysctl.saved"
}

# ---------------------------------------------------------------- network

node_network_up() {
  ip link add "${NODE_BRIDGE}" type bridge
  touch "${NODE}/bridge.created"
  ip addr add "${NODE_GATEWAY}/${POD_CIDR#*/}" dev "${NODE_BRIDGE}"
  ip link set "${NODE_BRIDGE}" up
  # pods reach the API server (127.0.0.1 only) through the kubernetes Service's IP, DNATed below to
  # loopback: allowed for packets from this bridge only (a per-interface sysctl, gone with the bridge)
  sysctl -q -w "net.ipv4.conf.${NODE_BRIDGE}.route_localnet=1"
  # Service traffic between two pods of the bridge must cross iptables (kube-proxy's DNAT)
  sysctl -q -w net.bridge.bridge-nf-call-iptables=1
  # The egress guard: nothing from the pods, and nothing addressed to the pod or Service ranges,
  # leaves through any interface other than the bridge (the machine's uplink included). Drop verdicts
  # in this table are final whatever iptables (kube-proxy, CNI) accepts.
  nft -f - <<NFT
table inet ${NODE_NFT_TABLE} {
  chain prerouting_nat {
    type nat hook prerouting priority dstnat - 10; policy accept;
    iifname "${NODE_BRIDGE}" ip daddr ${SERVICE_IP} tcp dport 443 counter dnat ip to 127.0.0.1:${APISERVER_PORT} comment "pods -> kube-apiserver on loopback"
  }
  chain forward {
    type filter hook forward priority filter - 10; policy accept;
    ip saddr ${POD_CIDR} oifname != "${NODE_BRIDGE}" counter drop comment "egress guard: pod traffic leaves only to the bridge"
    ip daddr ${POD_CIDR} iifname != "${NODE_BRIDGE}" counter drop comment "egress guard: pods reachable from the bridge only"
    ip daddr ${SERVICE_CIDR} counter drop comment "egress guard: unresolved Service IPs are never forwarded"
  }
  chain output {
    type filter hook output priority filter - 10; policy accept;
    ip daddr ${SERVICE_CIDR} counter reject with icmpx type admin-prohibited comment "egress guard: a Service IP kube-proxy did not translate"
  }
  # after routing, where the output interface is final (in the output hook it is the one chosen
  # before kube-proxy's DNAT): whatever goes to or comes from the pods leaves by the bridge only
  chain postrouting {
    type filter hook postrouting priority srcnat - 10; policy accept;
    ip daddr ${POD_CIDR} oifname != { "${NODE_BRIDGE}", "lo" } counter drop comment "egress guard: pod IPs only via the bridge"
    ip saddr ${POD_CIDR} oifname != { "${NODE_BRIDGE}", "lo" } counter drop comment "egress guard: pod sources only via the bridge"
    ip daddr ${SERVICE_CIDR} counter drop comment "egress guard: an untranslated Service IP never leaves"
  }
}
NFT
  touch "${NODE}/nft.created"
  cat >"${NODE}/cni/net.d/10-elastiserve.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "elastiserve",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${NODE_BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "${NODE}/cni/ipam",
        "ranges": [[{"subnet": "${POD_CIDR}", "gateway": "${NODE_GATEWAY}"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
}

node_network_down() {
  nft delete table inet "${NODE_NFT_TABLE}" 2>/dev/null || true
  rm -f "${NODE}/nft.created"
  if [[ -f "${NODE}/bridge.created" ]]; then
    ip link del "${NODE_BRIDGE}" 2>/dev/null || true
    rm -f "${NODE}/bridge.created"
  fi
}

# ---------------------------------------------------------------- containerd

# containerd's content store and snapshots outlive the node (images are imported once per content
# hash, ~1 GB unpacked for the project's image); `down` removes every container and pod sandbox.
NODE_CONTAINERD_ROOT="${ELASTISERVE_CACHE}/node/containerd-root"

node_containerd_up() {
  local c="${NODE}/containerd"
  mkdir -p "${c}/state" "${NODE_CONTAINERD_ROOT}"
  cat >"${c}/config.toml" <<TOML
version = 2
root = "${NODE_CONTAINERD_ROOT}"
state = "${c}/state"
oom_score = 0

[grpc]
  address = "$(NODE_SOCK)"

[ttrpc]
  address = "${c}/containerd.sock.ttrpc"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "${PAUSE_REF}"
    # No CAP_SYS_RESOURCE in this machine's bounding set: a negative oom_score_adj would make runc
    # fail ("can't get final child's PID from pipe: EOF"); the kubelet's oomScoreAdj is 0 too.
    restrict_oom_score_adj = true
    disable_apparmor = true
    enable_selinux = false
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "${CNI_BIN_DIR}"
      conf_dir = "${NODE}/cni/net.d"
      max_conf_num = 1
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
TOML
  start_proc containerd containerd --config "${c}/config.toml" --log-level warn
  wait_component containerd 60 "containerd" nctr version
}

node_import() {
  local archive=$1 ref=${2:-}
  if [[ -n "${ref}" ]] && nctr images check "name==${ref}" 2>/dev/null | grep -q "complete"; then
    log "${ref} already in the node's containerd"
    return 0
  fi
  log "importing $(basename "${archive}") into the node's containerd"
  nctr images import "${archive}" >/dev/null ||
    die "ctr images import ${archive} failed"
}

# ---------------------------------------------------------------- kubelet / kube-proxy

node_certs() {
  local pki="${STATE}/pki" client="basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth"
  sign_cert kubelet "/O=system:nodes/CN=system:node:${REAL_NODE_NAME}" "${client}"
  sign_cert kube-proxy "/CN=system:kube-proxy" "${client}"
  write_kubeconfig "${NODE}/kubelet.kubeconfig" kubelet "system:node:${REAL_NODE_NAME}"
  write_kubeconfig "${NODE}/kube-proxy.kubeconfig" kube-proxy system:kube-proxy
  [[ -f "${pki}/ca.crt" ]] || die "no cluster CA in ${pki}"
  local server="basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth"
  # the kubelet's serving certificate, signed by the cluster CA (not self-signed): metrics-server
  # verifies it (--kubelet-certificate-authority) instead of skipping TLS verification
  sign_cert kubelet-serving "/O=system:nodes/CN=system:node:${REAL_NODE_NAME}" \
    "${server}\nsubjectAltName=IP:${NODE_GATEWAY},DNS:${REAL_NODE_NAME}"
  sign_cert coredns "/CN=system:coredns" "${client}"
  write_kubeconfig "${NODE}/coredns.kubeconfig" coredns system:coredns
  # metrics-server: a client identity (API server and kubelets) and a serving certificate for the
  # aggregation layer (the APIService's caBundle is the cluster CA)
  sign_cert metrics-server "/CN=system:metrics-server" "${client}"
  write_kubeconfig "${NODE}/metrics-server.kubeconfig" metrics-server system:metrics-server
  sign_cert metrics-server-serving "/CN=metrics-server.kube-system.svc" \
    "${server}\nsubjectAltName=DNS:metrics-server.kube-system.svc,DNS:metrics-server.kube-system.svc.${CLUSTER_DOMAIN},IP:${NODE_GATEWAY}"
}

node_kubelet_up() {
  local total_mi system_mi
  total_mi=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
  system_mi=$((total_mi - NODE_POD_MEMORY_MI - NODE_KUBE_RESERVED_MEMORY_MI - 100))
  ((system_mi > 0)) || die "the machine has ${total_mi}Mi of memory; a node with ${NODE_POD_MEMORY_MI}Mi for pods needs more"
  mkdir -p "${NODE}/kubelet" "${NODE}/pod-logs"
  printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"${NODE}/resolv.conf"
  cat >"${NODE}/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${NODE_GATEWAY}
port: ${KUBELET_PORT}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: ${KUBELET_HEALTHZ_PORT}
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${STATE}/pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$(NODE_SOCK)
cgroupDriver: cgroupfs
# this machine has cgroup v1 (the kubelet refuses it unless told)
failCgroupV1: false
# no CAP_SYS_RESOURCE here: the kubelet cannot make itself OOM-proof (negative oom_score_adj)
oomScoreAdj: 0
failSwapOn: false
podCIDR: ${POD_CIDR}
tlsCertFile: ${STATE}/pki/kubelet-serving.crt
tlsPrivateKeyFile: ${STATE}/pki/kubelet-serving.key
# pods resolve through CoreDNS (the kube-dns Service); resolvConf (no nameserver that answers) is
# only what dnsPolicy: Default pods get
clusterDNS: ["${CLUSTER_DNS_IP}"]
clusterDomain: ${CLUSTER_DOMAIN}
# heartbeats: the lease is renewed every quarter of its duration (2.5 s), so a short
# --node-monitor-grace-period (the test cluster's 20 s) is not crossed by a busy moment
nodeLeaseDurationSeconds: 10
podLogsDir: ${NODE}/pod-logs
resolvConf: ${NODE}/resolv.conf
maxPods: 30
# fair sharing of the machine's cores: pods together get what is not reserved (cpu.shares and the
# memory limit of /kubepods), each pod its own cgroup limits
systemReserved: {cpu: "${NODE_SYSTEM_RESERVED_CPU}", memory: "${system_mi}Mi"}
kubeReserved: {cpu: "${NODE_KUBE_RESERVED_CPU}", memory: "${NODE_KUBE_RESERVED_MEMORY_MI}Mi"}
enforceNodeAllocatable: [pods]
evictionHard: {memory.available: "100Mi", nodefs.available: "2%", imagefs.available: "2%", nodefs.inodesFree: "2%"}
# images are imported, never pulled: never garbage-collect them
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
shutdownGracePeriod: 0s
containerLogMaxSize: 10Mi
YAML
  # --containerd: the kubelet's cAdvisor labels container_* series with namespace/pod/container only
  # when it reaches containerd, by default at /run/containerd/containerd.sock (not ours); the flag is
  # deprecated but honoured in v1.34. Without it Prometheus sees cgroup ids and no pod names.
  start_proc kubelet "$(KUBELET_BIN)" \
    --config "${NODE}/kubelet.yaml" \
    --kubeconfig "${NODE}/kubelet.kubeconfig" \
    --root-dir "${NODE}/kubelet" \
    --hostname-override "${REAL_NODE_NAME}" \
    --node-ip "${NODE_GATEWAY}" \
    --containerd "$(NODE_SOCK)" \
    --node-labels "type=real,elastiserve.dev/node=real" \
    --v 1
}

node_kube_proxy_up() {
  cat >"${NODE}/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: ${NODE}/kube-proxy.kubeconfig}
# no CAP_SYS_RESOURCE here (see the kubelet)
oomScoreAdj: 0
hostnameOverride: ${REAL_NODE_NAME}
mode: iptables
clusterCIDR: ${POD_CIDR}
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:${KUBE_PROXY_HEALTHZ_PORT}
metricsBindAddress: 127.0.0.1:${KUBE_PROXY_METRICS_PORT}
# NodePorts on the bridge address only (never the uplink), and not on localhost (that needs
# net.ipv4.conf.all.route_localnet=1 host-wide)
nodePortAddresses: ["${NODE_GATEWAY}/32"]
iptables: {localhostNodePorts: false, masqueradeAll: false}
# leave the host's conntrack settings alone
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
  start_proc kube-proxy "$(KUBE_PROXY_BIN)" --config "${NODE}/kube-proxy.yaml" --v 1
}

# ---------------------------------------------------------------- CoreDNS and metrics-server

# Both run as host processes, like the control plane (see docs/local-cluster.md, "CoreDNS and
# metrics-server"), listening on the bridge address only; pods and the API server reach them through
# selector-less Services whose Endpoints name that address.
node_addons_objects() {
  local ca
  ca=$(base64 -w0 <"${STATE}/pki/ca.crt")
  kctl apply -f - >/dev/null <<YAML
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "elastiserve:coredns"}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "elastiserve:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "elastiserve:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:coredns"}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "elastiserve:metrics-server"}
rules:
- {apiGroups: [""], resources: [nodes/metrics], verbs: [get]}
- {apiGroups: [""], resources: [pods, nodes], verbs: [get, list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "elastiserve:metrics-server"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "elastiserve:metrics-server"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:metrics-server"}]
---
# delegated authentication and authorization (TokenReviews, SubjectAccessReviews) for its clients
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "elastiserve:metrics-server:auth-delegator"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:auth-delegator"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:metrics-server"}]
---
# the front-proxy CA the API server publishes in kube-system/extension-apiserver-authentication
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: "elastiserve:metrics-server:auth-reader", namespace: kube-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: "extension-apiserver-authentication-reader"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:metrics-server"}]
---
# kubectl top and the view/edit/admin roles
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: "system:aggregated-metrics-reader"
  labels:
    rbac.authorization.k8s.io/aggregate-to-view: "true"
    rbac.authorization.k8s.io/aggregate-to-edit: "true"
    rbac.authorization.k8s.io/aggregate-to-admin: "true"
rules:
- {apiGroups: [metrics.k8s.io], resources: [pods, nodes], verbs: [get, list, watch]}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/name: CoreDNS}
spec:
  clusterIP: ${CLUSTER_DNS_IP}
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
---
# selector-less: the endpointslice-mirroring controller turns these Endpoints into an EndpointSlice
apiVersion: v1
kind: Endpoints
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
subsets:
- addresses: [{ip: ${NODE_GATEWAY}}]
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata: {name: metrics-server, namespace: kube-system, labels: {k8s-app: metrics-server}}
spec:
  ports:
  - {name: https, port: 443, protocol: TCP, targetPort: ${METRICS_SERVER_PORT}}
---
apiVersion: v1
kind: Endpoints
metadata: {name: metrics-server, namespace: kube-system, labels: {k8s-app: metrics-server}}
subsets:
- addresses: [{ip: ${NODE_GATEWAY}}]
  ports: [{name: https, port: ${METRICS_SERVER_PORT}, protocol: TCP}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.metrics.k8s.io, labels: {k8s-app: metrics-server}}
spec:
  group: metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  service: {name: metrics-server, namespace: kube-system, port: 443}
  caBundle: ${ca}
YAML
}

node_coredns_up() {
  # Cluster names only: no forward plugin, so a name outside ${CLUSTER_DOMAIN} never leaves the
  # machine; it gets NXDOMAIN at once (the template) instead of a time-out.
  cat >"${NODE}/Corefile" <<COREFILE
${CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {
    bind ${NODE_GATEWAY}
    errors
    health 127.0.0.1:${COREDNS_HEALTH_PORT}
    ready 127.0.0.1:${COREDNS_READY_PORT}
    kubernetes ${CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {
        kubeconfig ${NODE}/coredns.kubeconfig elastiserve-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
}
.:53 {
    bind ${NODE_GATEWAY}
    template ANY ANY {
        rcode NXDOMAIN
    }
}
COREFILE
  start_proc coredns "$(COREDNS_BIN)" -conf "${NODE}/Corefile"
  # ready: the kubernetes plugin has synced Services and EndpointSlices
  wait_component coredns 60 "CoreDNS /ready" http_ok "http://127.0.0.1:${COREDNS_READY_PORT}/ready"
}

node_metrics_server_up() {
  local pki="${STATE}/pki" kc="${NODE}/metrics-server.kubeconfig"
  start_proc metrics-server "$(METRICS_SERVER_BIN)" \
    --kubeconfig "${kc}" --authentication-kubeconfig "${kc}" --authorization-kubeconfig "${kc}" \
    --bind-address "${NODE_GATEWAY}" --secure-port "${METRICS_SERVER_PORT}" \
    --tls-cert-file "${pki}/metrics-server-serving.crt" --tls-private-key-file "${pki}/metrics-server-serving.key" \
    --requestheader-client-ca-file "${pki}/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
    --kubelet-certificate-authority "${pki}/ca.crt" \
    --kubelet-client-certificate "${pki}/metrics-server.crt" --kubelet-client-key "${pki}/metrics-server.key" \
    --kubelet-preferred-address-types InternalIP --kubelet-use-node-status-port \
    --node-selector type=real \
    --metric-resolution "${METRICS_RESOLUTION}" \
    --profiling=false \
    --v 1
  wait_component metrics-server 60 "metrics-server /livez" \
    curl -fsS --max-time 2 -o /dev/null --cacert "${pki}/ca.crt" "https://${NODE_GATEWAY}:${METRICS_SERVER_PORT}/livez"
}

node_ready() {
  [[ "$(kctl get node "${REAL_NODE_NAME}" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == "True" ]]
}

# ---------------------------------------------------------------- up / down

node_up() {
  node_preflight
  if node_present && node_alive && node_ready; then
    log "real node ${REAL_NODE_NAME} already running"
    return 0
  fi
  node_present && node_down
  node_claim
  local start
  start=$(now_s)
  mkdir -p "${NODE}/cni/net.d" "${NODE}/cni/ipam"
  node_record_host
  load_ports
  choose_port KUBELET_PORT "" "kubelet"
  choose_port KUBELET_HEALTHZ_PORT "" "kubelet healthz"
  choose_port KUBE_PROXY_HEALTHZ_PORT "" "kube-proxy healthz"
  choose_port KUBE_PROXY_METRICS_PORT "" "kube-proxy metrics"
  choose_port COREDNS_HEALTH_PORT "" "CoreDNS health"
  choose_port COREDNS_READY_PORT "" "CoreDNS ready"
  choose_port METRICS_SERVER_PORT "" "metrics-server"
  local pause
  pause=$(bash "${HACK_DIR}/image.sh" pause) || die "building the pause image failed"
  node_network_up
  node_containerd_up
  node_import "${pause}" "${PAUSE_REF}"
  node_certs
  node_addons_objects
  node_coredns_up
  node_metrics_server_up
  node_kube_proxy_up
  node_kubelet_up
  wait_component kubelet 120 "node ${REAL_NODE_NAME} Ready" node_ready
  wait_component kube-proxy 60 "kube-proxy /healthz" \
    curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:${KUBE_PROXY_HEALTHZ_PORT}/healthz"
  printf 'node-up\t%s\n' $(($(now_s) - start)) >>"${LOG_ROOT}/build-times.tsv"
  log "real node ${REAL_NODE_NAME} Ready in $(fmt_duration $(($(now_s) - start))) (pods ${POD_CIDR} on ${NODE_BRIDGE})"
}

# Stop the kubelet (SIGTERM, as a service manager would) and start it again with the same config and
# ports; the containers keep running meanwhile. For the node-level fault tests.
node_kubelet_restart() {
  node_present && alive kubelet || die "no real node runs in ${STATE} (ELASTISERVE_REAL_NODE=1 hack/cluster.sh up)"
  load_ports
  stop_procs kubelet
  node_kubelet_up
  wait_component kubelet 60 "the kubelet's /healthz" \
    curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:${KUBELET_HEALTHZ_PORT}/healthz"
  log "kubelet restarted"
}

# Stop the kubelet only (the containers, containerd and kube-proxy keep running): the node stops
# heartbeating and goes NotReady after the controller-manager's --node-monitor-grace-period.
node_kubelet_stop() {
  node_present && alive kubelet || die "no running kubelet in ${STATE} (ELASTISERVE_REAL_NODE=1 hack/cluster.sh up)"
  stop_procs kubelet
}

# Start the kubelet stopped by node_kubelet_stop again, with the same config and ports.
node_kubelet_start() {
  node_present || die "no real node in ${STATE} (ELASTISERVE_REAL_NODE=1 hack/cluster.sh up)"
  alive kubelet && die "the kubelet of ${STATE} already runs"
  load_ports
  node_kubelet_up
  wait_component kubelet 60 "the kubelet's /healthz" \
    curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:${KUBELET_HEALTHZ_PORT}/healthz"
  log "kubelet started"
}

# Kill what is left of this node's containerd shims (their command line names our socket).
node_kill_shims() {
  local pid sock
  sock=$(NODE_SOCK)
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*${sock}" 2>/dev/null); do
    kill -KILL "${pid}" 2>/dev/null || true
  done
}

# Unmount everything mounted below $1 (deepest first).
umount_below() {
  local root=$1 mp
  awk -v r="${root}" '$5 == r || index($5, r "/") == 1 {print $5}' /proc/self/mountinfo | sort -r |
    while IFS= read -r mp; do
      umount "${mp}" 2>/dev/null || umount -l "${mp}" 2>/dev/null || log "could not unmount ${mp}"
    done
}

# Remove the kubelet's /kubepods cgroups in every v1 hierarchy (after killing what is left in them).
node_remove_cgroups() {
  local hier d pid
  for hier in /sys/fs/cgroup/*/; do
    d="${hier}kubepods"
    [[ -d "${d}" ]] || continue
    for pid in $(find "${d}" -name cgroup.procs -exec cat {} + 2>/dev/null); do
      kill -KILL "${pid}" 2>/dev/null || true
    done
  done
  for hier in /sys/fs/cgroup/*/; do
    d="${hier}kubepods"
    [[ -d "${d}" ]] || continue
    find "${d}" -depth -type d -exec rmdir {} + 2>/dev/null || true
    if [[ -d "${d}" ]]; then log "could not remove cgroup ${d}"; fi
  done
}

node_down() {
  node_present || return 0
  log "stopping the real node ${REAL_NODE_NAME}"
  stop_procs kubelet
  # tear pods down through the CRI (CNI DEL, network namespaces) while containerd still runs
  if alive containerd; then
    ncrictl rmp --all --force >/dev/null 2>&1 || log "crictl rmp failed; removing what is left by hand"
  fi
  stop_procs kube-proxy metrics-server coredns
  "$(KUBE_PROXY_BIN)" --cleanup >/dev/null 2>&1 || log "kube-proxy --cleanup reported an error"
  node_iptables_cleanup
  stop_procs containerd
  node_kill_shims
  node_remove_cgroups
  umount_below "${NODE}"
  umount_below "${NODE_CONTAINERD_ROOT}"
  umount_below /run/containerd
  local ns
  for ns in /run/netns/cni-*; do
    [[ -e "${ns}" ]] || continue
    umount "${ns}" 2>/dev/null || true
    rm -f "${ns}"
  done
  node_network_down
  node_restore_sysctls
  if [[ -f "${NODE}/hostdirs.created" ]]; then
    local d
    while IFS= read -r d; do
      [[ -n "${d}" && -e "${d}" ]] || continue
      umount_below "${d}"
      rm -rf "${d}"
    done <"${NODE}/hostdirs.created"
  fi
  kctl delete node "${REAL_NODE_NAME}" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  if [[ -f "${NODE_OWNER_FILE}" && "$(cat "${NODE_OWNER_FILE}")" == "${STATE}" ]]; then rm -f "${NODE_OWNER_FILE}"; fi
  rm -rf "${NODE}"
  log "real node stopped; host state restored"
}

node_status() {
  node_present || { echo "real node: not running"; return 0; }
  components_status "${NODE_COMPONENTS[@]}"
}
