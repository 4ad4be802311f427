# shellcheck shell=bash
# up/down/env/status for hack/cluster.sh (sourced after hack/lib.sh).
#
# State layout (${ELASTISERVE_CLUSTER_DIR}):
#   .elastiserve-cluster   marker: only a folder holding it is ever deleted
#   ports.env              ports chosen by `up`
#   kubeconfig             admin kubeconfig (system:masters)
#   pki/                   CA, serving and client certificates, SA key pair
#   etc/                   per-component kubeconfigs
#   pids/<name>.pid        one process group per component (pid == pgid)
#   logs/<name>.log        component logs
#   etcd/                  etcd data

STATE="${ELASTISERVE_CLUSTER_DIR}"
MARKER="${STATE}/.elastiserve-cluster"
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
NODE_COUNT="${ELASTISERVE_NODES:-3}"
NODE_CPU="${ELASTISERVE_NODE_CPU:-32}"
NODE_MEMORY="${ELASTISERVE_NODE_MEMORY:-64Gi}"
NODE_PODS="${ELASTISERVE_NODE_PODS:-110}"
SERVICE_CIDR="10.96.0.0/16"
SERVICE_IP="10.96.0.1"
# How long a node may miss heartbeats before the controller-manager marks it NotReady (and its pods
# not Ready). 5m by default: kwok's heartbeats starve under the demo's load. The real-node tests use
# 20s (ELASTISERVE_NODE_MONITOR_GRACE_PERIOD) so a stopped kubelet makes the node NotReady quickly.
NODE_MONITOR_GRACE_PERIOD="${ELASTISERVE_NODE_MONITOR_GRACE_PERIOD:-5m}"

kctl() { "$(KUBECTL_BIN)" --kubeconfig "${STATE}/kubeconfig" "$@"; }

pid_of() {
  local f="${STATE}/pids/$1.pid"
  [[ -f "${f}" ]] && cat "${f}"
}

# Does pid $1 run component $2 of *this* cluster? Every component's command line names a path under
# ${STATE}, so a recycled pid (pid_max can be 32768) running something else, or another cluster's
# component, does not count.
runs_component() {
  local cmd
  [[ -r "/proc/$1/cmdline" ]] || return 1
  cmd=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
  [[ "${cmd}" == *"$2"* && "${cmd}" == *"${STATE}/"* ]]
}

# Is component $1 alive? (its pid exists and still runs the binary we started)
alive() {
  local pid
  pid=$(pid_of "$1" 2>/dev/null) || return 1
  [[ -n "${pid}" ]] || return 1
  runs_component "${pid}" "$1"
}

any_alive() {
  local c
  for c in "${COMPONENTS[@]}"; do alive "${c}" && return 0; done
  return 1
}

all_alive() {
  local c
  for c in "${COMPONENTS[@]}"; do alive "${c}" || return 1; done
  return 0
}

# start_proc NAME BINARY ARGS... : start in its own session/process group,
# detached from our stdin/stdout (so callers capturing output never hang) and
# from our lock fd.
start_proc() {
  local name=$1
  shift
  local logf="${STATE}/logs/${name}.log" bin
  bin=$(readlink -f "$(command -v "$1")") || die "${name}: no executable $1"
  setsid "$@" </dev/null >>"${logf}" 2>&1 9>&- &
  local pid=$!
  echo "${pid}" >"${STATE}/pids/${name}.pid"
  # The pid execs twice: our forked shell execs setsid, setsid execs the binary. Before that the
  # pid's command line is our shell's or setsid's (which names the component too), and while the
  # kernel replaces the image /proc/PID/cmdline reads empty for a moment: `alive` would call a
  # healthy component dead ("exited during startup" with an empty log; it happened in CI). Wait
  # until the pid runs the binary itself and its command line is in place.
  local deadline=$(($(now_s) + 10))
  until [[ "$(readlink -f "/proc/${pid}/exe" 2>/dev/null)" == "${bin}" ]] && runs_component "${pid}" "${name}"; do
    pid_running "${pid}" || break
    (($(now_s) < deadline)) || break
    sleep 0.02
  done
  log "started ${name} (pid ${pid}, log ${logf})"
}

# Why component $1 is not alive, for an error message (in NOT_ALIVE: `wait` must run in this shell,
# not in a $(...) subshell): its exit status when it was our child, or what its pid runs instead.
not_alive_reason() {
  local name=$1 pid status
  NOT_ALIVE="${name} has no pid file"
  pid=$(pid_of "${name}" 2>/dev/null) || return 0
  if pid_running "${pid}"; then
    NOT_ALIVE="${name}'s pid ${pid} runs '$(tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null)', not ${name}"
    return 0
  fi
  if wait "${pid}" 2>/dev/null; then status=0; else status=$?; fi
  if ((status == 127)); then
    NOT_ALIVE="${name} (pid ${pid}) exited"
  elif ((status > 128)); then
    NOT_ALIVE="${name} (pid ${pid}) was killed by SIG$(kill -l $((status - 128)) 2>/dev/null || echo $((status - 128)))"
  else
    NOT_ALIVE="${name} (pid ${pid}) exited with status ${status}"
  fi
}

# Is pid $1 running? (a zombie child of this shell does not count)
pid_running() {
  kill -0 "$1" 2>/dev/null || return 1
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ "${state}" != "Z" ]]
}

# stop_procs NAME... : SIGTERM them together, wait up to 15s, then SIGKILL
# whatever is left of their process groups (pid == pgid thanks to setsid).
stop_procs() {
  local name pid pids=() names=()
  for name in "$@"; do
    pid=$(pid_of "${name}" 2>/dev/null) || continue
    [[ -n "${pid}" ]] || continue
    if alive "${name}"; then
      kill -TERM "${pid}" 2>/dev/null || true
      pids+=("${pid}")
    else
      # stale pid file: that pid may since belong to someone else; never signal it
      pids+=("")
    fi
    names+=("${name}")
  done
  local deadline=$(($(now_s) + 15)) i running
  while (($(now_s) < deadline)); do
    running=0
    for pid in "${pids[@]}"; do
      [[ -n "${pid}" ]] && pid_running "${pid}" && running=1
    done
    ((running)) || break
    sleep 0.1
  done
  for i in "${!pids[@]}"; do
    pid=${pids[i]}
    if [[ -n "${pid}" ]] && kill -0 -- "-${pid}" 2>/dev/null; then
      kill -KILL -- "-${pid}" 2>/dev/null || true
    fi
    rm -f "${STATE}/pids/${names[i]}.pid"
    log "stopped ${names[i]} (pid ${pid})"
  done
}

http_ok() { curl -fsS --max-time 2 -o /dev/null "$@"; }

# ---------------------------------------------------------------- certificates

gen_key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; }

# sign_cert NAME SUBJECT EXTENSIONS : key + cert in pki/, signed by the local CA
sign_cert() {
  local name=$1 subj=$2 ext=$3 pki="${STATE}/pki"
  gen_key "${pki}/${name}.key"
  printf '%b\n' "${ext}" >"${pki}/${name}.ext"
  openssl req -new -key "${pki}/${name}.key" -subj "${subj}" -out "${pki}/${name}.csr" 2>/dev/null
  openssl x509 -req -in "${pki}/${name}.csr" -CA "${pki}/ca.crt" -CAkey "${pki}/ca.key" \
    -CAcreateserial -days 3650 -sha256 -extfile "${pki}/${name}.ext" -out "${pki}/${name}.crt" 2>/dev/null
  rm -f "${pki}/${name}.csr" "${pki}/${name}.ext"
}

gen_pki() {
  local pki="${STATE}/pki"
  mkdir -p "${pki}"
  gen_key "${pki}/ca.key"
  openssl req -x509 -new -key "${pki}/ca.key" -subj "/CN=elastiserve-local-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "${pki}/ca.crt" 2>/dev/null
  local client="basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth"
  sign_cert apiserver "/CN=kube-apiserver" \
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:${SERVICE_IP},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  sign_cert admin "/O=system:masters/CN=kubernetes-admin" "${client}"
  sign_cert kube-controller-manager "/CN=system:kube-controller-manager" "${client}"
  sign_cert kube-scheduler "/CN=system:kube-scheduler" "${client}"
  sign_cert kwok "/O=system:masters/CN=kwok-controller" "${client}"
  # the API server's identity towards a real node's kubelet (kubectl logs/exec/port-forward)
  sign_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "${client}"
  # front proxy (aggregation layer): lets aggregated APIs and the delegated
  # authentication of the controller-manager/scheduler trust request headers
  gen_key "${pki}/front-proxy-ca.key"
  openssl req -x509 -new -key "${pki}/front-proxy-ca.key" -subj "/CN=elastiserve-front-proxy-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "${pki}/front-proxy-ca.crt" 2>/dev/null
  gen_key "${pki}/front-proxy-client.key"
  printf '%b\n' "${client}" >"${pki}/front-proxy-client.ext"
  openssl req -new -key "${pki}/front-proxy-client.key" -subj "/CN=front-proxy-client" -out "${pki}/front-proxy-client.csr" 2>/dev/null
  openssl x509 -req -in "${pki}/front-proxy-client.csr" -CA "${pki}/front-proxy-ca.crt" -CAkey "${pki}/front-proxy-ca.key" \
    -CAcreateserial -days 3650 -sha256 -extfile "${pki}/front-proxy-client.ext" -out "${pki}/front-proxy-client.crt" 2>/dev/null
  rm -f "${pki}/front-proxy-client.csr" "${pki}/front-proxy-client.ext"
  # service-account token signing key pair
  openssl genrsa -out "${pki}/sa.key" 2048 2>/dev/null
  openssl rsa -in "${pki}/sa.key" -pubout -out "${pki}/sa.pub" 2>/dev/null
  chmod 600 "${pki}"/*.key
}

# write_kubeconfig FILE CERT_NAME USER
write_kubeconfig() {
  local file=$1 cert=$2 user=$3 pki="${STATE}/pki"
  cat >"${file}" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: elastiserve-local
  cluster:
    server: https://127.0.0.1:${APISERVER_PORT}
    certificate-authority-data: $(base64 -w0 <"${pki}/ca.crt")
users:
- name: ${user}
  user:
    client-certificate-data: $(base64 -w0 <"${pki}/${cert}.crt")
    client-key-data: $(base64 -w0 <"${pki}/${cert}.key")
contexts:
- name: elastiserve-local
  context:
    cluster: elastiserve-local
    user: ${user}
current-context: elastiserve-local
KCFG
  chmod 600 "${file}"
}

# ---------------------------------------------------------------- ports

# choose_port VAR ENV_OVERRIDE DESC
choose_port() {
  local var=$1 override=$2 desc=$3 port
  if [[ -n "${override}" ]]; then
    [[ "${override}" =~ ^[0-9]+$ ]] || die "${desc} port '${override}' is not a number"
    port_in_use "${override}" && die "port ${override} (${desc}) is already in use on 127.0.0.1; set another one or free it"
    port=${override}
  else
    port=$(free_port)
    # each call asks the kernel afresh: it may give a port chosen a moment ago for another component
    while grep -q "=${port}\$" "${STATE}/ports.env" 2>/dev/null; do port=$(free_port); done
  fi
  printf -v "${var}" '%s' "${port}"
  echo "${var}=${port}" >>"${STATE}/ports.env"
}

load_ports() {
  [[ -f "${STATE}/ports.env" ]] || return 1
  # shellcheck disable=SC1091
  source "${STATE}/ports.env"
}

# ---------------------------------------------------------------- up

preflight() {
  local b
  for b in "$(ETCD_BIN)" "$(APISERVER_BIN)" "$(KCM_BIN)" "$(SCHEDULER_BIN)" "$(KUBECTL_BIN)" "$(KWOK_BIN)"; do
    [[ -x "${b}" ]] || die "missing ${b}: run 'hack/cluster.sh build' first"
  done
  local t
  for t in openssl curl setsid flock; do
    command -v "${t}" >/dev/null 2>&1 || die "'${t}' is required (apt-get install -y openssl curl util-linux)"
  done
}

on_up_failure() {
  local rc=$?
  trap - EXIT INT TERM
  if ((rc != 0)); then
    if compgen -G "${STATE}/logs/*.log" >/dev/null; then
      local keep f
      keep="${LOG_ROOT}/cluster-failed-$(date -u +%Y%m%dT%H%M%SZ)"
      mkdir -p "${keep}"
      cp -r "${STATE}/logs/." "${keep}/" 2>/dev/null || true
      for f in "${keep}"/*.log; do
        log "--- last lines of $(basename "${f}")"
        tail -n 8 "${f}" >&2 || true
      done
      log "component logs kept in ${keep}"
      LAST_ERROR=${LAST_ERROR//"${STATE}/logs"/"${keep}"}
      # keep the 5 newest failure folders
      find "${LOG_ROOT}" -maxdepth 1 -type d -name 'cluster-failed-*' | sort | head -n -5 | xargs -r rm -rf
    fi
    do_down >/dev/null 2>&1 || true
    log "cluster start failed; everything it started was stopped"
    [[ -n "${LAST_ERROR}" ]] && printf '[cluster] ERROR: %s\n' "${LAST_ERROR}" >&2
  fi
  exit "${rc}"
}

wait_component() {
  local name=$1 timeout=$2 desc=$3
  shift 3
  local deadline=$(($(now_s) + timeout))
  while true; do
    if ! alive "${name}"; then
      not_alive_reason "${name}"
      die "${NOT_ALIVE} during startup; see ${STATE}/logs/${name}.log"
    fi
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    (($(now_s) < deadline)) || die "timed out after ${timeout}s waiting for ${desc}; see ${STATE}/logs/${name}.log"
    sleep 0.5
  done
}

create_nodes() {
  local i manifest=""
  ((NODE_COUNT > 0)) || return 0
  for ((i = 0; i < NODE_COUNT; i++)); do
    manifest+="---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-${i}
  annotations:
    kwok.x-k8s.io/node: fake
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: kwok-node-${i}
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: \"\"
    type: kwok
    topology.kubernetes.io/zone: zone-$((i % 3))
spec: {}
status:
  allocatable:
    cpu: \"${NODE_CPU}\"
    memory: ${NODE_MEMORY}
    pods: \"${NODE_PODS}\"
  capacity:
    cpu: \"${NODE_CPU}\"
    memory: ${NODE_MEMORY}
    pods: \"${NODE_PODS}\"
  nodeInfo:
    architecture: amd64
    kubeletVersion: ${KUBERNETES_VERSION}
    kubeProxyVersion: ${KUBERNETES_VERSION}
    operatingSystem: linux
  phase: Running
"
  done
  printf '%s' "${manifest}" | kctl apply -f - >/dev/null
}

do_up() {
  preflight
  mkdir -p "${ELASTISERVE_CACHE}"
  if [[ -f "${MARKER}" ]]; then
    if all_alive && load_ports && kctl get --raw /readyz >/dev/null 2>&1; then
      log "already running (kubeconfig: ${STATE}/kubeconfig)"
      if [[ "${ELASTISERVE_REAL_NODE:-0}" == 1 ]]; then
        node_up
      fi
      return 0
    fi
    log "found a stale or partial cluster in ${STATE}; cleaning it up first"
    do_down
  elif [[ -d "${STATE}" ]] && [[ -n "$(ls -A "${STATE}" 2>/dev/null)" ]]; then
    die "${STATE} exists, is not empty and is not an elastiserve cluster dir; set ELASTISERVE_CLUSTER_DIR to another folder"
  fi

  mkdir -p "${STATE}"/{pids,logs,etc,etcd}
  touch "${MARKER}"
  : >"${STATE}/ports.env"
  trap on_up_failure EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  local start
  start=$(now_s)
  choose_port ETCD_PORT "${ELASTISERVE_ETCD_PORT:-}" "etcd client"
  choose_port ETCD_PEER_PORT "${ELASTISERVE_ETCD_PEER_PORT:-}" "etcd peer"
  choose_port APISERVER_PORT "${ELASTISERVE_APISERVER_PORT:-}" "kube-apiserver"
  choose_port KCM_PORT "${ELASTISERVE_KCM_PORT:-}" "kube-controller-manager"
  choose_port SCHEDULER_PORT "${ELASTISERVE_SCHEDULER_PORT:-}" "kube-scheduler"
  choose_port KWOK_PORT "${ELASTISERVE_KWOK_PORT:-}" "kwok"

  gen_pki
  local pki="${STATE}/pki" etc="${STATE}/etc"
  write_kubeconfig "${STATE}/kubeconfig" admin kubernetes-admin
  write_kubeconfig "${etc}/kube-controller-manager.kubeconfig" kube-controller-manager system:kube-controller-manager
  write_kubeconfig "${etc}/kube-scheduler.kubeconfig" kube-scheduler system:kube-scheduler
  write_kubeconfig "${etc}/kwok.kubeconfig" kwok kwok-controller

  start_proc etcd "$(ETCD_BIN)" \
    --name elastiserve --data-dir "${STATE}/etcd" \
    --listen-client-urls "http://127.0.0.1:${ETCD_PORT}" \
    --advertise-client-urls "http://127.0.0.1:${ETCD_PORT}" \
    --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-cluster "elastiserve=http://127.0.0.1:${ETCD_PEER_PORT}" \
    --unsafe-no-fsync --quota-backend-bytes 2147483648 --log-level warn
  wait_component etcd 60 "etcd health" http_ok "http://127.0.0.1:${ETCD_PORT}/health"

  start_proc kube-apiserver "$(APISERVER_BIN)" \
    --etcd-servers "http://127.0.0.1:${ETCD_PORT}" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "${APISERVER_PORT}" \
    --tls-cert-file "${pki}/apiserver.crt" --tls-private-key-file "${pki}/apiserver.key" \
    --client-ca-file "${pki}/ca.crt" \
    --requestheader-client-ca-file "${pki}/front-proxy-ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User \
    --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "${pki}/front-proxy-client.crt" \
    --proxy-client-key-file "${pki}/front-proxy-client.key" \
    --enable-aggregator-routing=true \
    --kubelet-preferred-address-types InternalIP \
    --kubelet-client-certificate "${pki}/apiserver-kubelet-client.crt" \
    --kubelet-client-key "${pki}/apiserver-kubelet-client.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "${pki}/sa.pub" \
    --service-account-signing-key-file "${pki}/sa.key" \
    --service-cluster-ip-range "${SERVICE_CIDR}" \
    --authorization-mode Node,RBAC \
    --allow-privileged=true \
    --endpoint-reconciler-type none \
    --cert-dir "${pki}" \
    --profiling=false \
    --v 1
  wait_component kube-apiserver 120 "kube-apiserver /readyz" kctl get --raw /readyz

  start_proc kube-controller-manager "$(KCM_BIN)" \
    --kubeconfig "${etc}/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig "${etc}/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig "${etc}/kube-controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "${KCM_PORT}" \
    --controllers '*' \
    --use-service-account-credentials=true \
    --service-account-private-key-file "${pki}/sa.key" \
    --root-ca-file "${pki}/ca.crt" \
    --cluster-signing-cert-file "${pki}/ca.crt" --cluster-signing-key-file "${pki}/ca.key" \
    --cluster-name elastiserve \
    --service-cluster-ip-range "${SERVICE_CIDR}" \
    --leader-elect=false \
    --node-monitor-grace-period "${NODE_MONITOR_GRACE_PERIOD}" \
    --horizontal-pod-autoscaler-sync-period "${ELASTISERVE_HPA_SYNC_PERIOD:-15s}" \
    --profiling=false \
    --v 1

  start_proc kube-scheduler "$(SCHEDULER_BIN)" \
    --kubeconfig "${etc}/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "${etc}/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "${etc}/kube-scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "${SCHEDULER_PORT}" \
    --leader-elect=false \
    --profiling=false \
    --v 1

  start_proc kwok "$(KWOK_BIN)" \
    --kubeconfig "${etc}/kwok.kubeconfig" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --server-address "127.0.0.1:${KWOK_PORT}" \
    --cidr 10.244.0.1/16 \
    --node-ip 127.0.0.1

  wait_component kube-controller-manager 90 "kube-controller-manager /healthz" \
    curl -fsSk --max-time 2 -o /dev/null "https://127.0.0.1:${KCM_PORT}/healthz"
  wait_component kube-scheduler 90 "kube-scheduler /healthz" \
    curl -fsSk --max-time 2 -o /dev/null "https://127.0.0.1:${SCHEDULER_PORT}/healthz"
  wait_component kwok 60 "kwok /healthz" http_ok "http://127.0.0.1:${KWOK_PORT}/healthz"

  create_nodes
  if ((NODE_COUNT > 0)); then
    wait_component kwok 120 "${NODE_COUNT} Ready kwok nodes" \
      kctl wait --for=condition=Ready node -l type=kwok --timeout=2s
  fi
  # the serviceaccount controller must have created 'default' before pods can be admitted
  wait_component kube-controller-manager 60 "the default ServiceAccount" \
    kctl -n default get serviceaccount default

  if [[ "${ELASTISERVE_REAL_NODE:-0}" == 1 ]]; then
    node_up
  fi

  trap - EXIT INT TERM
  log "cluster up in $(fmt_duration $(($(now_s) - start))): kube-apiserver https://127.0.0.1:${APISERVER_PORT}, ${NODE_COUNT} kwok nodes$([[ "${ELASTISERVE_REAL_NODE:-0}" == 1 ]] && echo ", real node ${REAL_NODE_NAME}")"
  log "kubeconfig: ${STATE}/kubeconfig  (eval \"\$(hack/cluster.sh env)\")"
}

# ---------------------------------------------------------------- down/env/status

do_down() {
  if [[ ! -d "${STATE}" ]]; then
    log "nothing to stop (${STATE} does not exist)"
    return 0
  fi
  if [[ ! -f "${MARKER}" ]]; then
    die "${STATE} is not an elastiserve cluster dir (no marker file); not touching it"
  fi
  # the real node first (it restores host state and needs the API server for nothing but a last
  # delete), then the clients, then the API server, then its storage
  node_down
  stop_procs kwok kube-scheduler kube-controller-manager
  stop_procs kube-apiserver
  stop_procs etcd
  rm -rf "${STATE}"
  log "cluster stopped; removed ${STATE}"
}

do_env() {
  [[ -f "${STATE}/kubeconfig" ]] || die "no cluster state in ${STATE}: run 'hack/cluster.sh up' first"
  printf 'export KUBECONFIG=%q\n' "${STATE}/kubeconfig"
  printf 'export ELASTISERVE_KUBECONFIG=%q\n' "${STATE}/kubeconfig"
  printf 'export ELASTISERVE_BIN_DIR=%q\n' "$(k8s_dir)"
  printf 'export ELASTISERVE_KUBECTL=%q\n' "$(KUBECTL_BIN)"
  printf 'export ELASTISERVE_HELM=%q\n' "$(HELM_BIN)"
  printf 'export ELASTISERVE_KWOK=%q\n' "$(KWOK_BIN)"
  # Prometheus with kubernetes_sd_configs (built by build-node; hack/prometheus-sd.py writes its config)
  printf 'export ELASTISERVE_PROMETHEUS_SD=%q\n' "$(PROMETHEUS_BIN)"
  # shellcheck disable=SC2016
  printf 'export PATH=%q:%q:%q:"$PATH"\n' "$(k8s_dir)" "$(helm_dir)" "$(kwok_dir)"
}

# components_status NAME... : one line per component (running with its pid, or STOPPED); fails if any stopped.
components_status() {
  local c rc=0
  for c in "$@"; do
    if alive "${c}"; then
      printf '%-24s running  pid %s\n' "${c}" "$(pid_of "${c}")"
    else
      printf '%-24s STOPPED\n' "${c}"
      rc=1
    fi
  done
  return "${rc}"
}

do_status() {
  if [[ ! -f "${MARKER}" ]]; then
    echo "cluster: not running (no state in ${STATE})"
    return 1
  fi
  load_ports || true
  local rc=0
  components_status "${COMPONENTS[@]}" || rc=1
  echo "kube-apiserver: https://127.0.0.1:${APISERVER_PORT:-?}  etcd: http://127.0.0.1:${ETCD_PORT:-?}"
  echo "kubeconfig: ${STATE}/kubeconfig"
  node_status || rc=1
  if kctl get --raw /readyz >/dev/null 2>&1; then
    echo "readyz: ok"
    kctl get nodes -o wide 2>/dev/null || true
  else
    echo "readyz: NOT ready"
    rc=1
  fi
  return "${rc}"
}

with_lock() {
  mkdir -p "${ELASTISERVE_CACHE}"
  exec 9>"${ELASTISERVE_CACHE}/cluster.lock"
  flock -w 600 9 || die "could not lock ${ELASTISERVE_CACHE}/cluster.lock (another up/down is running?)"
  "$@"
}

cmd_up() { with_lock do_up; }
cmd_down() { with_lock do_down; }

# node-up: add the real node to a running cluster
do_node_up() {
  [[ -f "${MARKER}" ]] && all_alive && load_ports || die "no running cluster in ${STATE}: run 'hack/cluster.sh up' first"
  trap 'rc=$?; trap - EXIT; if ((rc != 0)); then log "real node start failed; stopping it (logs: ${STATE}/logs/{containerd,kubelet,kube-proxy}.log)"; node_down >/dev/null 2>&1 || true; fi; exit ${rc}' EXIT
  node_up
  trap - EXIT
}
cmd_node_up() { with_lock do_node_up; }
cmd_node_down() { with_lock node_down; }
cmd_kubelet_restart() { with_lock node_kubelet_restart; }
cmd_kubelet_stop() { with_lock node_kubelet_stop; }
cmd_kubelet_start() { with_lock node_kubelet_start; }

# image: build the project's image (cached by content) and import it into the running real node
cmd_image() {
  local archive
  archive=$(bash "${HACK_DIR}/image.sh" build | tail -n 1) || die "image build failed"
  local ref
  ref=$(bash "${HACK_DIR}/image.sh" ref)
  if node_present && alive containerd; then
    node_import "${archive}" "${ref}"
  fi
  printf '%s\n' "${ref}"
}
cmd_env() { do_env; }
cmd_status() { do_status; }
