"""Structure checks of the deployment files (see scripts/check-ops.sh)."""

import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
failures: list[str] = []


def fail(msg: str) -> None:
    failures.append(msg)


def exported_names() -> set[str]:
    # Names live in src/metrics.rs, except those a leaf module must own to
    # stay out of a module cycle (src/panics.rs; metrics.rs re-exports them).
    src = "".join((ROOT / f).read_text() for f in ("src/metrics.rs", "src/panics.rs"))
    return set(re.findall(r'"(outreach_[a-z0-9_]+)"', src))


def metric_names(expr: str) -> set[str]:
    names = set()
    for n in re.findall(r"\b(outreach_[a-z0-9_]+)", expr):
        names.add(re.sub(r"_(bucket|sum|count)$", "", n))
    return names


def check_compose() -> None:
    path = ROOT / "docker-compose.yml"
    c = yaml.safe_load(path.read_text())
    services = c.get("services", {})
    for name in ["rabbitmq", "postgres", "worker", "prometheus", "grafana"]:
        if name not in services:
            fail(f"docker-compose.yml: service {name} is missing")
    for name, s in services.items():
        image = s.get("image", "")
        if "build" not in s and (":" not in image or image.endswith(":latest")):
            fail(f"docker-compose.yml: {name}: image {image!r} is not pinned to a version tag")
        for dep in s.get("depends_on", []):
            if dep not in services:
                fail(f"docker-compose.yml: {name} depends on unknown service {dep}")
        for vol in s.get("volumes", []):
            host = vol.split(":")[0]
            if host.startswith("./") and not (ROOT / host).exists():
                fail(f"docker-compose.yml: {name} mounts {host}, which does not exist")
    w = services.get("worker", {})
    test = w.get("healthcheck", {}).get("test", [])
    if test[:3] != ["CMD", "outreach", "health"]:
        fail(f"docker-compose.yml: worker healthcheck should run `outreach health`, not {test}")
    env = w.get("environment", {})
    if not str(env.get("OUTREACH__HTTP__BIND", "")).startswith("0.0.0.0:"):
        fail("docker-compose.yml: worker must bind 0.0.0.0 inside its container")
    keys = env.get("OUTREACH_ENCRYPTION_KEYS", "")
    if not re.fullmatch(r"[A-Za-z0-9_-]+:[0-9a-f]{64}", keys):
        fail("docker-compose.yml: OUTREACH_ENCRYPTION_KEYS must be kid:<64 hex>")
    text = path.read_text()
    token = re.search(r'admin token "([^"]+)"', text)
    digest = env.get("OUTREACH__ADMIN__OPERATOR_TOKEN_SHA256", "")
    if not token or hashlib.sha256(token.group(1).encode()).hexdigest() != digest:
        fail("docker-compose.yml: the admin token digest does not match the example token in its comment")
    if text.count("EXAMPLE ONLY") < 3:
        fail("docker-compose.yml: example secrets must be marked EXAMPLE ONLY")
    plugins = (ROOT / "config/rabbitmq/enabled_plugins").read_text()
    if "rabbitmq_prometheus" not in plugins:
        fail("config/rabbitmq/enabled_plugins: rabbitmq_prometheus is needed for :15692")
    prom = yaml.safe_load((ROOT / "config/prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"] for j in prom["scrape_configs"]}
    if not {"outreach", "rabbitmq"} <= jobs:
        fail(f"prometheus.yml: scrape jobs outreach and rabbitmq expected, found {sorted(jobs)}")


def check_alerts(known: set[str], anchors: set[str]) -> None:
    rules = yaml.safe_load((ROOT / "config/prometheus/alerts.yml").read_text())
    for group in rules["groups"]:
        for r in group["rules"]:
            a = r.get("annotations", {})
            for field in ["summary", "description", "runbook_url"]:
                if not a.get(field):
                    fail(f"alert {r['alert']}: no {field}")
            anchor = a.get("runbook_url", "").partition("#")[2]
            if anchor not in anchors:
                fail(f"alert {r['alert']}: runbook section #{anchor} is not in docs/runbook.md")
            for n in metric_names(r["expr"]) - known:
                fail(f"alert {r['alert']}: {n} is not exported (src/metrics.rs)")


def check_dashboard(known: set[str]) -> None:
    exprs = []
    for path in sorted((ROOT / "config/grafana/dashboards").glob("*.json")):
        d = json.loads(path.read_text())
        for p in d["panels"]:
            for t in p.get("targets", []):
                exprs.append((path.name, p["title"], t["expr"]))
    if not exprs:
        fail("config/grafana/dashboards: no panels with queries")
    for name, title, e in exprs:
        for n in metric_names(e) - known:
            fail(f"{name}: panel {title!r} queries {n}, which is not exported (src/metrics.rs)")
    # promtool parses each query as a recording rule.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": e.replace("$__rate_interval", "5m").replace("$tenant", ".*")}
        for i, (_, _, e) in enumerate(exprs)]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        yaml.safe_dump(rules, f)
        f.flush()
        r = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"dashboard queries do not parse:\n{r.stdout}{r.stderr}")


def check_k8s() -> None:
    files = sorted((ROOT / "deploy/k8s").glob("*.yaml"))
    docs = [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    for kind in ["Deployment", "Secret", "Service"]:
        if kind not in kinds:
            fail(f"deploy/k8s: no {kind}")
    dep = kinds.get("Deployment")
    if dep:
        spec = dep["spec"]["template"]["spec"]
        c = spec["containers"][0]
        for probe in ["livenessProbe", "readinessProbe"]:
            if probe not in c:
                fail(f"deploy/k8s: the worker has no {probe}")
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        grace = int(env.get("OUTREACH__WORKER__SHUTDOWN_GRACE_SECS", 30))
        period = spec.get("terminationGracePeriodSeconds", 30)
        if not isinstance(period, int) or period <= grace:
            fail("deploy/k8s: terminationGracePeriodSeconds must exceed the worker's drain time")
    try:
        import kubernetes_validate  # noqa: F401  (ships the schemas: works offline)
    except ImportError:
        fail("kubernetes-validate is missing: pip install kubernetes-validate (.ci/run does)")
        return
    r = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", *map(str, files)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"deploy/k8s does not validate:\n{r.stdout}{r.stderr}")


def main() -> None:
    known = exported_names()
    runbook = (ROOT / "docs/runbook.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", runbook, re.M)}
    check_compose()
    check_alerts(known, anchors)
    check_dashboard(known)
    check_k8s()
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)
    print("compose, alerts, dashboard, runbook links and deploy/k8s: ok")


if __name__ == "__main__":
    main()
