#!/usr/bin/env python3
"""The parts of scripts/check-deploy.sh that read YAML, JSON and PromQL. Not meant to be run alone.

    check_deploy.py split RENDERED OUTDIR          sort a rendered overlay by validator
    check_deploy.py rules WORK                     cross-object rules over WORK/render/*.yaml
    check_deploy.py exec RENDERED KIND NAME CONTAINER SUBST.json MISSING -- BIN_DIR
                                                   run one container's command locally with
                                                   exactly its environment (see kubelet_env)
    check_deploy.py probe RENDERED KIND NAME CONTAINER   the container's probe paths, one a line
    check_deploy.py catalogue METERS_RS SCRAPE...   the metric families, one a line
    check_deploy.py promql CATALOGUE OUT.rules.yaml FILE...
                                                   PromQL of rules files and dashboards: writes a
                                                   rules file for promtool, checks the names

Every check prints lines `PASS<TAB>name` or `FAIL<TAB>name`, then indented details.
"""
from __future__ import annotations

import base64
import json
import os
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Kinds validated against the vendored CRD schemas (k8s/schemas/), by apiVersion group.
CRD_SCHEMAS = {
    ("keda.sh", "ScaledObject"): "k8s/schemas/keda/scaledobject-keda-v1alpha1.json",
    ("keda.sh", "TriggerAuthentication"): "k8s/schemas/keda/triggerauthentication-keda-v1alpha1.json",
    ("monitoring.coreos.com", "ServiceMonitor"): "k8s/schemas/prometheus-operator/servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com", "PrometheusRule"): "k8s/schemas/prometheus-operator/prometheusrule-monitoring-v1.json",
}


def load_all(path) -> list[dict]:
    return [d for d in yaml.safe_load_all(pathlib.Path(path).read_text()) if d]


def rule(name: str, problems: list[str]) -> None:
    if problems:
        print(f"FAIL\t{name}")
        for p in problems:
            print(f"      {p}")
    else:
        print(f"PASS\t{name}")


def name_of(d: dict) -> str:
    return f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"


def pod_spec(doc: dict):
    spec = doc.get("spec", {})
    if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return spec.get("template", {}).get("spec", {})
    if doc.get("kind") == "CronJob":
        return spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
    return None


def containers(doc: dict) -> list[dict]:
    ps = pod_spec(doc) or {}
    return ps.get("initContainers", []) + ps.get("containers", [])


def secret_data(secret: dict) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    data.update(secret.get("stringData") or {})
    return data


# ---- split ----------------------------------------------------------------------------------------
def cmd_split(rendered: str, outdir: str) -> int:
    out = pathlib.Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    core = []
    for i, doc in enumerate(load_all(rendered)):
        api, kind = str(doc.get("apiVersion", "")), str(doc.get("kind", ""))
        group = api.split("/")[0] if "/" in api else ""
        if (group, kind) in CRD_SCHEMAS:
            path = out / f"{i:02d}-{kind}-{doc['metadata']['name']}.json"
            path.write_text(json.dumps(doc))
            print(f"CRD\t{CRD_SCHEMAS[(group, kind)]}\t{path}\t{name_of(doc)}")
        elif "." in group and not group.endswith(".k8s.io"):
            print(f"UNKNOWN\t{name_of(doc)}\tno vendored schema for {api} {kind}")
        else:
            core.append(doc)
    (out / "core.yaml").write_text(yaml.safe_dump_all(core, sort_keys=False))
    print(f"CORE\t{out / 'core.yaml'}\t{len(core)}")
    return 0


# ---- the kubelet's view of a container's environment -------------------------------------------------
def kubelet_env(objs: list[dict], container: dict) -> tuple[dict[str, str], list[str]]:
    """The environment the kubelet gives `container`, and what would stop it
    (CreateContainerConfigError): a missing ConfigMap/Secret, or a missing key of a non-optional
    secretKeyRef/configMapKeyRef."""
    by = {(d.get("kind"), d["metadata"]["name"]): d for d in objs}
    env: dict[str, str] = {}
    missing: list[str] = []
    for src in container.get("envFrom", []):
        for ref, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
            if ref not in src:
                continue
            obj = by.get((kind, src[ref]["name"]))
            if obj is None:
                if not src[ref].get("optional"):
                    missing.append(f"envFrom {kind} {src[ref]['name']} does not exist")
                continue
            data = secret_data(obj) if kind == "Secret" else dict(obj.get("data") or {})
            prefix = src.get("prefix", "")
            env.update({prefix + k: v for k, v in data.items()})
    for item in container.get("env", []):
        if "value" in item or "valueFrom" not in item:
            env[item["name"]] = str(item.get("value", ""))
            continue
        vf = item["valueFrom"]
        for ref, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
            if ref not in vf:
                continue
            r = vf[ref]
            obj = by.get((kind, r["name"]))
            data = (secret_data(obj) if kind == "Secret" else dict(obj.get("data") or {})) if obj else None
            if data is None or r["key"] not in data:
                if not r.get("optional"):
                    what = "does not exist" if data is None else f"has no key {r['key']}"
                    missing.append(f"{item['name']}: {kind} {r['name']} {what}")
                continue
            env[item["name"]] = data[r["key"]]
        if "fieldRef" in vf or "resourceFieldRef" in vf:
            env[item["name"]] = "check-deploy"
    return env, missing


def find_container(objs, kind, name, container_name):
    for d in objs:
        if d.get("kind") == kind and (d["metadata"]["name"] == name or d["metadata"]["name"].startswith(name)):
            for c in containers(d):
                if c["name"] == container_name:
                    return d, c
    raise SystemExit(f"{kind}/{name} has no container {container_name}")


def cmd_exec(rendered, kind, name, container_name, subst_file, missing_file, bin_dir) -> int:
    """Replaces this process by the container's command, run from BIN_DIR, with exactly the
    kubelet's environment after the substitutions of SUBST (the header of scripts/check-deploy.sh;
    k8s/README.md, "What scripts/check-deploy.sh checks"). Keys the kubelet would not find are written to MISSING; the process still starts
    without them, so the binary's own refusal shows too."""
    objs = load_all(rendered)
    _, c = find_container(objs, kind, name, container_name)
    env, missing = kubelet_env(objs, c)
    pathlib.Path(missing_file).write_text("".join(m + "\n" for m in missing))
    subst = json.loads(pathlib.Path(subst_file).read_text())
    for key, value in subst["keys"].items():
        if key in env:  # never adds a key: a missing one must stay missing
            env[key] = value
    for key, value in env.items():
        if "REPLACE_ME" in value and key not in subst["keys"]:
            env[key] = subst["placeholder"]
    argv = list(c.get("command", [])) + list(c.get("args", []))
    if not argv:
        raise SystemExit(f"{kind}/{name} container {container_name} has no command")
    argv[0] = str(pathlib.Path(bin_dir) / pathlib.Path(argv[0]).name)
    # A pod has no inherited variables but PATH and HOSTNAME from the image and the kubelet.
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("HOSTNAME", f"check-deploy-{container_name}")
    sys.stdout.flush()
    os.execve(argv[0], argv, env)
    return 1


def cmd_probe(rendered, kind, name, container_name) -> int:
    _, c = find_container(load_all(rendered), kind, name, container_name)
    for probe in ("readinessProbe", "startupProbe", "livenessProbe"):
        path = c.get(probe, {}).get("httpGet", {}).get("path")
        if path:
            print(f"{probe}\t{path}")
    return 0


# ---- cross-object rules --------------------------------------------------------------------------
def overlay_rules(overlay: str, objs: list[dict]) -> None:
    def of_kind(kind):
        return [d for d in objs if d.get("kind") == kind]

    def one(kind, name):
        return next((d for d in of_kind(kind) if d["metadata"]["name"] == name), None)

    tag = f"[{overlay}]"
    workloads = [d for d in objs if pod_spec(d) is not None]
    deployments = {d["metadata"].get("labels", {}).get("app.kubernetes.io/component"): d for d in of_kind("Deployment")}
    api, worker = deployments.get("api"), deployments.get("worker")
    main_cm = next((d for d in of_kind("ConfigMap") if d["metadata"]["name"].startswith("automation-engine-")
                    and d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "config"), None)
    config = dict(main_cm.get("data") or {}) if main_cm else {}
    secrets = of_kind("Secret")

    rule(f"{tag} every pod spec sets enableServiceLinks: false",
         [name_of(d) for d in workloads if pod_spec(d).get("enableServiceLinks") is not False])

    problems = []
    for d in workloads:
        ps = pod_spec(d)
        psc = ps.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            problems.append(f"{name_of(d)}: pod securityContext.runAsNonRoot is not true")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name_of(d)}: pod seccompProfile is not RuntimeDefault")
        for c in containers(d):
            sc = c.get("securityContext", {})
            where = f"{name_of(d)} container {c.get('name')}"
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem is not true")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{where}: capabilities.drop lacks ALL")
            if "memory" not in c.get("resources", {}).get("limits", {}) or not c.get("resources", {}).get("requests"):
                problems.append(f"{where}: needs resource requests and a memory limit")
    rule(f"{tag} every container is non-root, read-only, unprivileged and has resources", problems)

    problems = []
    for d in objs:
        labels = d.get("metadata", {}).get("labels", {})
        if labels.get("app.kubernetes.io/part-of") != "automation-engine" or "app.kubernetes.io/name" not in labels \
                or "app.kubernetes.io/component" not in labels or "app.kubernetes.io/version" not in labels \
                or "automation-engine/region" not in labels:
            problems.append(f"{name_of(d)}: needs app.kubernetes.io/name, part-of=automation-engine, component, version, automation-engine/region")
        if not d.get("metadata", {}).get("namespace"):
            problems.append(f"{name_of(d)}: no namespace (the overlay sets one)")
    rule(f"{tag} every object has a namespace and the app.kubernetes.io and region labels", problems)

    # What the kubelet would refuse: a missing ConfigMap, Secret or key (CreateContainerConfigError).
    problems = []
    for d in workloads:
        for c in containers(d):
            _, missing = kubelet_env(objs, c)
            problems += [f"{name_of(d)} container {c['name']}: {m} (the pod would not start)" for m in missing]
    rule(f"{tag} every envFrom and secretKeyRef of every container resolves (no missing key)", problems)

    problems = []
    if len(secrets) != 1 or not secrets[0]["metadata"]["name"].startswith("automation-engine-"):
        problems.append(f"expected one generated Secret automation-engine-<hash>, found {[name_of(s) for s in secrets]}")
    if main_cm is None:
        problems.append("no generated ConfigMap automation-engine-<hash>")
    rule(f"{tag} ConfigMap and Secret are generated with a content hash", problems)

    # Drain budgets fit the termination grace periods.
    problems = []
    worker_grace = int(config.get("AUTOMATION_WORKER__SHUTDOWN_GRACE_SECS", 25))
    api_grace = int(config.get("AUTOMATION_API__SHUTDOWN_GRACE_SECS", 20))
    if worker is None or api is None:
        problems.append("the api and worker Deployments were not both found")
    else:
        w, a = pod_spec(worker), pod_spec(api)
        wt = w.get("terminationGracePeriodSeconds", 30)
        if wt <= worker_grace + 5:
            problems.append(f"worker terminationGracePeriodSeconds {wt} leaves under 5 s after the {worker_grace} s drain")
        if any(c.get("lifecycle", {}).get("preStop") for c in w.get("containers", [])):
            problems.append("worker has a preStop hook: it would eat into the drain budget")
        at = a.get("terminationGracePeriodSeconds", 30)
        sleep = max((c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
                     for c in a.get("containers", [])), default=0)
        if sleep <= 0:
            problems.append("api has no preStop sleep: endpoints may still route to a pod that stopped accepting")
        if at <= sleep + api_grace:
            problems.append(f"api terminationGracePeriodSeconds {at} <= preStop {sleep} s + drain {api_grace} s")
    rule(f"{tag} grace periods fit the drains (worker {worker_grace} s, api {api_grace} s + preStop)", problems)

    # KEDA: one ScaledObject for the worker, a trigger per queue, a TriggerAuthentication per work
    # queue reading a key of the generated Secret; no credentials in trigger metadata.
    problems = []
    prefix = config.get("AUTOMATION_AMQP__PREFIX", "automation")
    partitions = int(config.get("AUTOMATION_WORKER__PARTITIONS", "16"))
    names = {(d.get("kind"), d["metadata"]["name"]) for d in objs}
    sos = of_kind("ScaledObject")
    tas = {d["metadata"]["name"]: d for d in of_kind("TriggerAuthentication")}
    secret = secrets[0] if secrets else {"metadata": {}}
    if len(sos) != 1:
        problems.append(f"expected one ScaledObject (KEDA allows one per workload), found {len(sos)}")
    for so in sos:
        spec = so["spec"]
        target = spec["scaleTargetRef"]["name"]
        if ("Deployment", target) not in names:
            problems.append(f"scaleTargetRef {target} is not a Deployment of the overlay")
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
                problems.append(f"trigger {t.get('name')}: TriggerAuthentication {ref!r} is not in the overlay")
                continue
            hosts = [r for r in ta["spec"].get("secretTargetRef", []) if r.get("parameter") == "host"]
            if not hosts:
                problems.append(f"TriggerAuthentication {ref}: no secretTargetRef for parameter host")
            for r in hosts:
                if r.get("name") != secret["metadata"].get("name") or r.get("key") not in secret_data(secret):
                    problems.append(f"TriggerAuthentication {ref}: {r.get('name')}/{r.get('key')} is not a key of the generated Secret")
        wanted = [f"{prefix}.commands", f"{prefix}.tasks"] + [f"{prefix}.commands.p{i}" for i in range(partitions)]
        for q in wanted:
            if q not in queues:
                problems.append(f"no trigger for queue {q} (prefix {prefix!r}, {partitions} partitions from the ConfigMap)")
        extra = [q for q in queues if q and q.startswith(f"{prefix}.commands.p") and q not in wanted]
        if extra:
            problems.append(f"triggers for partitions the ConfigMap does not have: {extra}")

        def work_queue(q):
            return f"{prefix}.commands" if q and q.startswith(f"{prefix}.commands") else q
        by_queue = {}
        for q, t in queues.items():
            by_queue.setdefault(t.get("authenticationRef", {}).get("name"), set()).add(work_queue(q))
        if any(len(qs) > 1 for qs in by_queue.values()):
            problems.append("two work queues share a TriggerAuthentication; the contract asks for one per work queue")
        paused = (so["metadata"].get("annotations") or {}).get("autoscaling.keda.sh/paused-replicas")
        if spec.get("minReplicaCount", 0) < 1 and paused is None:
            problems.append("minReplicaCount must be >= 1: schedules and the outbox sweep run in the worker")
        if overlay == "dr":
            if paused != "0" or (worker and worker["spec"].get("replicas") != 0):
                problems.append("dr: the workers must be held at 0 (paused-replicas \"0\" and replicas: 0)")
        elif paused is not None:
            problems.append(f"{overlay}: the ScaledObject is paused; only dr holds its workers at 0")
    rule(f"{tag} KEDA: one ScaledObject, a trigger and a TriggerAuthentication per work queue", problems)

    # The release: the image tag of every container is the version label, and the migration Job's
    # name carries it (so each release gets its own Job, nothing to delete by hand).
    problems = []
    jobs = of_kind("Job")
    for d in workloads:
        version = d["metadata"].get("labels", {}).get("app.kubernetes.io/version")
        for c in containers(d):
            m = re.fullmatch(r"([^@]+?)(?::([^:@/]+))?(?:@(sha256:[0-9a-f]{64}))?", c.get("image", ""))
            tag_, digest = (m.group(2), m.group(3)) if m else (None, None)
            if tag_ != version:
                problems.append(f"{name_of(d)} container {c['name']}: image tag {tag_!r} is not the version label {version!r}")
            if overlay in ("production", "dr") and not digest:
                problems.append(f"{name_of(d)} container {c['name']}: {overlay} pins the image by digest (image@sha256:...)")
    if len(jobs) != 1:
        problems.append(f"expected one migration Job, found {len(jobs)}")
    for j in jobs:
        version = j["metadata"].get("labels", {}).get("app.kubernetes.io/version")
        if j["metadata"]["name"] != f"automation-migrate-{version}":
            problems.append(f"{name_of(j)}: the name must be automation-migrate-<release> (automation-migrate-{version})")
        if not j["spec"].get("ttlSecondsAfterFinished"):
            problems.append(f"{name_of(j)}: needs ttlSecondsAfterFinished")
    rule(f"{tag} images carry the release tag{' and a digest' if overlay != 'dev' else ''}; the migration Job is named for the release", problems)

    # Services, Ingress, NetworkPolicy, monitoring.
    problems = []
    svc = one("Service", "automation-engine-service")
    api_labels = (pod_spec(api) and api["spec"]["template"]["metadata"]["labels"]) if api else {}
    if svc is None:
        problems.append("no Service automation-engine-service (Spring callers use http://automation-engine-service:8000)")
    else:
        if not any(p.get("port") == 8000 for p in svc["spec"].get("ports", [])):
            problems.append("automation-engine-service has no port 8000")
        if not all(api_labels.get(k) == v for k, v in svc["spec"].get("selector", {}).items()):
            problems.append("automation-engine-service does not select the API pods")
    for ing in of_kind("Ingress"):
        for r in ing["spec"].get("rules", []):
            for p in r.get("http", {}).get("paths", []):
                path, ptype = p.get("path", "/"), p.get("pathType")
                exposes = path == "/metrics" or (ptype == "Prefix" and "/metrics".startswith(path.rstrip("/") + "/")) \
                    or (ptype == "ImplementationSpecific" and "/metrics".startswith(path))
                if exposes or path in ("/", ""):
                    problems.append(f"{name_of(ing)} routes {path} ({ptype}): /metrics must not be public")
    if not of_kind("Ingress"):
        problems.append("no Ingress for the API")
    rule(f"{tag} Service automation-engine-service:8000 selects the API; the Ingress does not route /metrics", problems)

    problems = []
    pols = of_kind("NetworkPolicy")

    def policy_for(labels):
        return [p for p in pols if all(labels.get(k) == v for k, v in p["spec"]["podSelector"].get("matchLabels", {}).items())]

    def peers_ns(rules_, side):
        found = set()
        for r in rules_:
            for peer in r.get(side, []):
                ns = peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
                if ns:
                    found.add(ns)
        return found

    def ports(rules_):
        return {(p.get("port"), p.get("protocol", "TCP")) for r in rules_ for p in r.get("ports", [])}
    if api:
        ps = policy_for(api_labels)
        ing = [r for p in ps for r in p["spec"].get("ingress", [])]
        if not ps or "Ingress" not in ps[0]["spec"].get("policyTypes", []):
            problems.append("no ingress NetworkPolicy selects the API pods")
        for ns in ("ingress-nginx", "frontend", "monitoring"):
            if ns not in peers_ns(ing, "from"):
                problems.append(f"API ingress does not admit the {ns} namespace")
    if worker:
        wl = worker["spec"]["template"]["metadata"]["labels"]
        ps = policy_for(wl)
        eg = [r for p in ps for r in p["spec"].get("egress", [])]
        if not ps or "Egress" not in ps[0]["spec"].get("policyTypes", []):
            problems.append("no egress NetworkPolicy selects the worker pods")
        for port in ((5672, "TCP"), (3306, "TCP"), (53, "UDP"), (443, "TCP")):
            if port not in ports(eg):
                problems.append(f"worker egress lacks {port[0]}/{port[1]}")
        if "monitoring" not in peers_ns([r for p in ps for r in p["spec"].get("ingress", [])], "from"):
            problems.append("worker ingress does not admit the monitoring namespace (metrics scrape)")
    rule(f"{tag} NetworkPolicy: API from ingress, frontend and monitoring; worker egress 5672, 3306, DNS, 443", problems)

    problems = []
    sms = of_kind("ServiceMonitor")
    for comp, d in (("api", api), ("worker", worker)):
        svcs = [s for s in of_kind("Service") if s["metadata"]["labels"].get("app.kubernetes.io/component") == comp
                and any(p.get("name") == "metrics" for p in s["spec"].get("ports", []))]
        if not svcs:
            problems.append(f"no Service with a metrics port for the {comp}")
            continue
        if not any(all(svcs[0]["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"].get("matchLabels", {}).items())
                   and any(e.get("port") == "metrics" for e in sm["spec"].get("endpoints", [])) for sm in sms):
            problems.append(f"no ServiceMonitor scrapes the {comp}'s metrics port")
    prs = of_kind("PrometheusRule")
    alerts = {r.get("alert") for p in prs for g in p["spec"].get("groups", []) for r in g.get("rules", [])}
    base_alerts = {r.get("alert") for g in yaml.safe_load((ROOT / "k8s/base/alerts/rules.yaml").read_text())["groups"] for r in g["rules"]}
    expected = base_alerts - ({"AutomationConsumerDown"} if overlay == "dr" else set())
    if alerts != expected:
        problems.append(f"PrometheusRule alerts {sorted(alerts)} are not {sorted(expected)}")
    for p in prs:
        for g in p["spec"]["groups"]:
            for r in g["rules"]:
                for n in re.findall(r"automation_worker_partitions_owned\)\s*<\s*(\d+)", r.get("expr", "")):
                    if int(n) != partitions:
                        problems.append(f"{r['alert']} counts {n} partitions; the ConfigMap has {partitions}")
    rule(f"{tag} ServiceMonitors for both binaries; PrometheusRule with the alerts{' (no consumer-down while held at 0)' if overlay == 'dr' else ''}", problems)


def repo_rules() -> None:
    # The Secret template holds every key with placeholders only; secret.env is never committed.
    problems = []
    example = ROOT / "k8s/secret.env.example"
    keys = {}
    for line in example.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            keys[k.strip()] = v
    for k, v in keys.items():
        if "REPLACE_ME" not in v:
            problems.append(f"secret.env.example: {k} holds a value, not a REPLACE_ME placeholder")
    for path in sorted((ROOT / "k8s/overlays").glob("*/secret.env")):
        problems.append(f"{path.relative_to(ROOT)} exists in the tree: keep it out of git (it is git-ignored; check-deploy never reads it)")
    rule("k8s/secret.env.example holds placeholders only, and no overlay's secret.env is in the tree", problems)

    # The base lists every manifest and sets no namespace.
    problems = []
    base = ROOT / "k8s/base"
    kz = yaml.safe_load((base / "kustomization.yaml").read_text())
    resources = kz.get("resources", [])
    if "namespace" in kz:
        problems.append("base/kustomization.yaml sets a namespace; leave it to overlays")
    for r in resources:
        if not (base / r).exists():
            problems.append(f"base/kustomization.yaml lists {r}, which does not exist")
    not_objects = {"kustomization.yaml", "kustomizeconfig.yaml", "alerts/rules.yaml", "alerts/rules.test.yaml"}
    for path in sorted(base.rglob("*.yaml")):
        rel = str(path.relative_to(base))
        if rel not in not_objects and rel not in resources:
            problems.append(f"base/{rel} is not listed in base/kustomization.yaml")
        if rel not in not_objects:
            for d in load_all(path):
                if "namespace" in d.get("metadata", {}):
                    problems.append(f"base/{rel}: {name_of(d)} sets metadata.namespace")
    rule("base/kustomization.yaml lists every manifest; none sets a namespace", problems)

    # docker-compose: the app containers get the time to drain.
    problems = []
    cfg = {}
    for line in (base / "config.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            k, _, v = line.partition("=")
            cfg[k] = v
    worker_grace = int(cfg.get("AUTOMATION_WORKER__SHUTDOWN_GRACE_SECS", 25))
    api_grace = int(cfg.get("AUTOMATION_API__SHUTDOWN_GRACE_SECS", 20))
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())

    def seconds(v):
        m = re.fullmatch(r"(\d+)s", str(v or "10s"))
        return int(m.group(1)) if m else 0
    if seconds(compose["services"].get("worker", {}).get("stop_grace_period")) <= worker_grace:
        problems.append(f"worker stop_grace_period must exceed the {worker_grace} s drain (compose default 10 s)")
    if seconds(compose["services"].get("api", {}).get("stop_grace_period")) <= api_grace:
        problems.append(f"api stop_grace_period must exceed the {api_grace} s drain (compose default 10 s)")
    rule("docker-compose stop_grace_period fits the drains", problems)

    problems = []
    ignore = ROOT / ".dockerignore"
    lines = ignore.read_text().split() if ignore.exists() else []
    for entry in ("target/", ".git/", "*.log"):
        if entry not in lines:
            problems.append(f".dockerignore lacks {entry}")
    rule(".dockerignore excludes target/, .git/ and *.log", problems)


def cmd_rules(work: str) -> int:
    repo_rules()
    for path in sorted(pathlib.Path(work, "render").glob("*.yaml")):
        overlay_rules(path.stem, load_all(path))
    return 0


# ---- metrics and PromQL ---------------------------------------------------------------------------
def cmd_catalogue(meters_rs: str, *scrapes: str) -> int:
    """Families named in meters.rs plus those a scrape of the binaries shows; fails (exit 1) when a
    scrape shows a family meters.rs does not name."""
    named = set(re.findall(r'pub const [A-Z_]+: &str = "([a-z_:][a-z0-9_:]*)";', pathlib.Path(meters_rs).read_text()))
    scraped = set()
    for s in scrapes:
        scraped |= set(re.findall(r"^# TYPE (\S+) ", pathlib.Path(s).read_text(), re.M))
    for name in sorted(named | scraped):
        print(name)
    unknown = scraped - named
    if unknown:
        print(f"not named in {meters_rs}: {sorted(unknown)}", file=sys.stderr)
        return 1
    return 0


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or",
                "unless", "inf", "nan", "le", "atan2"}


def metric_names(expr: str) -> set[str]:
    e = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    e = re.sub(r"'(?:\\.|[^'\\])*'", "''", e)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_WORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def grafana_exprs(dashboard: dict):
    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))
    for p in walk(dashboard.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                yield f"panel {p.get('id')} {p.get('title')!r} {t.get('refId')}", t["expr"]


def cmd_promql(catalogue: str, out: str, *files: str) -> int:
    known = set(pathlib.Path(catalogue).read_text().split())
    record, problems, count = [], [], 0
    for f in files:
        path = pathlib.Path(f)
        if path.suffix == ".json":
            try:
                dash = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                problems.append(f"{f}: not JSON: {e}")
                continue
            variables = {v["name"] for v in dash.get("templating", {}).get("list", [])}
            for k in ("title", "uid", "panels"):
                if not dash.get(k):
                    problems.append(f"{f}: no {k}")
            exprs = list(grafana_exprs(dash))
            if not exprs:
                problems.append(f"{f}: no PromQL targets")
            for where, expr in exprs:
                for v in re.findall(r"\$\{?(\w+)\}?", expr):
                    if v not in variables and not v.startswith("__"):
                        problems.append(f"{f} {where}: ${v} is not a dashboard variable")
                # Grafana's variables as Prometheus would see them after interpolation.
                concrete = re.sub(r"\$__rate_interval|\$__interval|\$\{__rate_interval\}", "5m", expr)
                concrete = re.sub(r"\$__range", "1h", concrete)
                concrete = re.sub(r"\$\{?\w+\}?", ".*", concrete)
                record.append((f"{f} {where}", concrete))
        else:
            for g in yaml.safe_load(path.read_text())["groups"]:
                for r in g["rules"]:
                    record.append((f"{f} {r.get('alert') or r.get('record')}", r["expr"]))
    for where, expr in record:
        count += 1
        for name in metric_names(expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name not in known and base not in known:
                problems.append(f"{where}: {name} is not a metric the binaries export")
    rules = {"groups": [{"name": "promql-check", "rules": [
        {"record": f"check:expr_{i}", "expr": expr} for i, (_, expr) in enumerate(record)]}]}
    pathlib.Path(out).write_text(yaml.safe_dump(rules, sort_keys=False))
    with open(pathlib.Path(out).with_suffix(".where"), "w") as w:
        for i, (where, _) in enumerate(record):
            w.write(f"check:expr_{i}\t{where}\n")
    for p in problems:
        print(f"      {p}")
    print(f"      {count} expressions, metric names checked against {len(known)} families")
    return 1 if problems else 0


def main(argv: list[str]) -> int:
    cmd, args = argv[1], argv[2:]
    if cmd == "split":
        return cmd_split(*args)
    if cmd == "rules":
        return cmd_rules(*args)
    if cmd == "exec":
        sep = args.index("--")
        return cmd_exec(*args[:sep], args[sep + 1])
    if cmd == "probe":
        return cmd_probe(*args)
    if cmd == "catalogue":
        return cmd_catalogue(*args)
    if cmd == "promql":
        return cmd_promql(*args)
    raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
