#!/usr/bin/env bash
# Static checks of the deployment files (there is no container engine or cluster in CI):
# - deploy/k8s: every manifest against the Kubernetes schemas (kubernetes-validate, strict:
#   unknown fields fail), and kustomization.yaml lists exactly the manifests;
# - deploy/compose.yaml against the Compose specification's JSON schema
#   (deploy/schemas/compose-spec.json, vendored from compose-spec/compose-spec);
# - deploy/prometheus/alerts.yml and prometheus.yml: the structure Prometheus expects (promtool
#   is not available here); the metric names are checked by crates/mkww-mcp/tests/metrics.rs;
# - deploy/grafana/mkww-mcp.json: a dashboard whose every panel queries Prometheus;
# - the Dockerfile: `mkww-mcp serve` as entrypoint, a non-root user, a volume, and the port of
#   the binary's default `listen` exposed, listened on and probed (and the same in compose/k8s).
# Installs what it needs (PyPI) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import jsonschema, yaml' 2>/dev/null; then
  python3 -m pip install --quiet jsonschema pyyaml
fi
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  python3 -m pip install --quiet kubernetes-validate
fi

echo "== deploy: Kubernetes manifests (kubernetes-validate --strict)"
manifests=()
for file in deploy/k8s/*.yaml; do
  [ "$(basename "$file")" = kustomization.yaml ] && continue
  manifests+=("$file")
done
kubernetes-validate --strict --quiet "${manifests[@]}"

echo "== deploy: compose file, alerts, dashboard, Dockerfile"
python3 - <<'PY'
import json, pathlib, re, sys
import jsonschema, yaml

failures = []
def check(ok, message):
    if not ok:
        failures.append(message)

# kustomization.yaml lists every manifest but the example Secret, and nothing else.
k8s = pathlib.Path("deploy/k8s")
kustomization = yaml.safe_load((k8s / "kustomization.yaml").read_text())
listed = set(kustomization.get("resources", []))
present = {p.name for p in k8s.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
check(listed == present, f"kustomization.yaml lists {sorted(listed)}, the folder has {sorted(present)}")
deployment = yaml.safe_load((k8s / "deployment.yaml").read_text())

# Compose against the specification's schema.
schema = json.loads(pathlib.Path("deploy/schemas/compose-spec.json").read_text())
compose = yaml.safe_load(pathlib.Path("deploy/compose.yaml").read_text())
for error in jsonschema.Draft7Validator(schema).iter_errors(compose):
    failures.append(f"compose.yaml {'/'.join(map(str, error.path))}: {error.message}")
services = compose.get("services", {})
for needed in ("node-1", "node-2", "postgres", "redis"):
    check(needed in services and "profiles" not in services[needed], f"compose: {needed} missing or behind a profile")
for profile, names in {"monitoring": ("prometheus", "grafana"), "tracing": ("jaeger",)}.items():
    for name in names:
        check(profile in services.get(name, {}).get("profiles", []), f"compose: {name} not in profile {profile}")

# Alert rules: the structure of a Prometheus rule file.
alerts = yaml.safe_load(pathlib.Path("deploy/prometheus/alerts.yml").read_text())
names = set()
check(isinstance(alerts.get("groups"), list) and alerts["groups"], "alerts.yml: no groups")
for group in alerts.get("groups", []):
    check(isinstance(group.get("name"), str), f"alerts.yml: a group without a name")
    check(set(group) <= {"name", "interval", "rules", "limit", "labels"}, f"alerts.yml: group {group.get('name')}: unknown keys")
    for rule in group.get("rules", []):
        name = rule.get("alert")
        check(isinstance(name, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name or ""), f"alerts.yml: bad alert name {name!r}")
        check(name not in names, f"alerts.yml: {name} twice")
        names.add(name)
        check(set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, f"alerts.yml: {name}: unknown keys {sorted(rule)}")
        expr = rule.get("expr")
        check(isinstance(expr, str) and expr.strip() and "\n" not in expr.strip(), f"alerts.yml: {name}: expr missing or not on one line")
        check(expr is None or expr.count("(") == expr.count(")"), f"alerts.yml: {name}: unbalanced parentheses")
        check(re.fullmatch(r"\d+[smhdwy]", str(rule.get("for", "0s"))) is not None, f"alerts.yml: {name}: bad for")
        check(rule.get("labels", {}).get("severity") in ("critical", "warning", "info"), f"alerts.yml: {name}: severity")
        check("summary" in rule.get("annotations", {}), f"alerts.yml: {name}: no summary")
prometheus = yaml.safe_load(pathlib.Path("deploy/prometheus/prometheus.yml").read_text())
check("/etc/prometheus/alerts.yml" in prometheus.get("rule_files", []), "prometheus.yml does not load alerts.yml")

# Grafana dashboard: every panel queries through the data source variable.
dashboard = json.loads(pathlib.Path("deploy/grafana/mkww-mcp.json").read_text())
queries = 0
for panel in dashboard.get("panels", []):
    if panel.get("type") == "row":
        continue
    check(panel.get("targets"), f"dashboard: panel {panel.get('title')!r} has no query")
    for target in panel.get("targets", []):
        queries += 1
        check(target.get("expr", "").count("(") == target.get("expr", "").count(")"), f"dashboard: {panel.get('title')!r}: unbalanced parentheses")
check(queries > 0, "dashboard: no queries")
check(len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"]), "dashboard: duplicate panel ids")

# The Dockerfile against the binary's defaults.
dockerfile = pathlib.Path("Dockerfile").read_text()
defaults = pathlib.Path("crates/mkww-mcp/src/config/defaults.rs").read_text()
port = re.search(r'listen: "[^"]*:(\d+)"', defaults).group(1)
entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M).group(1))
check(entrypoint[-2:] == ["/usr/local/bin/mkww-mcp", "serve"], f"Dockerfile: entrypoint {entrypoint} does not end in mkww-mcp serve")
check(re.search(rf"^EXPOSE {port}$", dockerfile, re.M), f"Dockerfile: does not expose {port}")
check(f"MCP_LISTEN=0.0.0.0:{port}" in dockerfile, f"Dockerfile: does not listen on 0.0.0.0:{port}")
check(f"/dev/tcp/127.0.0.1/{port}" in dockerfile, "Dockerfile: the healthcheck probes another port")
user = re.findall(r"^USER (\S+)$", dockerfile, re.M)
check(user and not user[-1].startswith(("0", "root")), "Dockerfile: runs as root")
check(re.search(r'^VOLUME \["/data"\]$', dockerfile, re.M), "Dockerfile: no /data volume")
for name in ("node-1", "node-2"):
    check(any(str(p).endswith(f":{port}") for p in services[name].get("ports", [])), f"compose: {name} does not publish {port}")
container = deployment["spec"]["template"]["spec"]["containers"][0]
check(container["ports"][0]["containerPort"] == int(port), "k8s: containerPort differs from the binary's port")
configmap = yaml.safe_load((k8s / "configmap.yaml").read_text())
check(configmap["data"].get("MCP_LISTEN") == f"0.0.0.0:{port}", "k8s: MCP_LISTEN differs from the binary's port")

if failures:
    print("\n".join(failures), file=sys.stderr)
    sys.exit(1)
print(f"compose valid; {len(names)} alerts, {queries} dashboard queries; Dockerfile serves on {port}")
PY
