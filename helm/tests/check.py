"""Offline checks of the pkgstream chart (run by helm/check.sh, which puts
the tools in place; see helm/README.md, "Validation").

Each check prints one line; any failure makes the run exit 1 after all
checks ran. What is checked:
  - `helm lint --strict` with the default, minimal and production values;
  - every manifest of each values file, rendered for the oldest and newest
    Kubernetes version the chart supports, against that version's OpenAPI
    schemas (`kubernetes-validate --strict`); the prometheus-operator
    objects (no schema shipped) structurally, and their rules by promtool;
  - the ConfigMap's TOML accepted by `pkgstream config check`;
  - every key of config/pkgstream.example.toml reachable through `config:`
    (rendered from the example itself, parsed back equal), and the schema's
    `config` keys equal to the example's;
  - the PrometheusRule's groups equal to sinks/prometheus/alerts.yml, and
    `promtool check rules` on them;
  - each file of helm/tests/refused/ refused with the message it expects;
  - NOTES.txt warns exactly when router replicas exceed raw partitions;
  - and that the comparisons themselves can fail (a changed alert, an
    unknown manifest field, a changed TOML value are caught).
"""

import argparse
import concurrent.futures
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

# Keys of config/pkgstream.example.toml the chart sets itself, so `config:`
# refuses them (values.schema.json): the value they get instead.
CHART_OWNED = {
    ("router", "transactional_id"): "the pod name (PKGSTREAM__ROUTER__TRANSACTIONAL_ID)",
    ("router", "metrics_listen"): "0.0.0.0:<router.port>",
    ("search_sink", "metrics_listen"): "0.0.0.0:<searchSink.port>",
    ("metrics_sink", "metrics_listen"): "0.0.0.0:<metricsSink.port>",
    ("search_sink", "instance_id"): "derived from the pod name (empty default)",
}
# Inline secrets: refused in `config:` so that they never reach the
# ConfigMap; they come from secrets.env (PKGSTREAM__SECTION__KEY) or, where
# the binary has a `*_file` key, from a file of secrets.files. A new secret
# key of config/pkgstream.example.toml goes here (and stays out of
# values.schema.json); its `*_file` sibling goes into the schema.
SECRET_KEYS = {
    ("search_sink", "password"): "secrets.env (PKGSTREAM__SEARCH_SINK__PASSWORD)",
    ("search_sink", "api_key"): "secrets.env (PKGSTREAM__SEARCH_SINK__API_KEY) or search_sink.api_key_file",
    ("metrics_sink", "remote_write_password"): "secrets.env (PKGSTREAM__METRICS_SINK__REMOTE_WRITE_PASSWORD) or remote_write_password_file",
    ("metrics_sink", "remote_write_bearer_token"): "secrets.env (PKGSTREAM__METRICS_SINK__REMOTE_WRITE_BEARER_TOKEN) or remote_write_bearer_token_file",
    ("kafka", "sasl_password"): "secrets.env (PKGSTREAM__KAFKA__SASL_PASSWORD)",
    ("kafka", "ssl_key_password"): "secrets.env (PKGSTREAM__KAFKA__SSL_KEY_PASSWORD) or kafka.ssl_key_password_file",
}
NOT_IN_CONFIG = {**CHART_OWNED, **SECRET_KEYS}
PORTS = {"router": 9108, "search_sink": 9110, "metrics_sink": 9111}

failures = []
passed = []


def report(ok, what, detail=""):
    print(f"[helm-check] {'ok  ' if ok else 'FAIL'} {what}" + (f": {detail}" if detail and not ok else ""))
    (passed if ok else failures).append(what)
    return ok


class Tools:
    def __init__(self, args):
        self.helm = args.helm
        self.validate = args.kubernetes_validate
        self.promtool = args.promtool
        self.pkgstream = args.pkgstream
        self.chart = Path(args.chart)
        self.repo = Path(args.repo)
        self.kube_versions = args.kube_versions.split(",")

    def run(self, cmd):
        """Runs helm; its notice about files/alerts.yml being a link is dropped from stderr."""
        r = subprocess.run(cmd, capture_output=True, text=True)
        r.stderr = "\n".join(l for l in r.stderr.splitlines() if "found symbolic link in path" not in l)
        return r

    def template(self, values_files=(), sets=(), kube=None, extra=()):
        cmd = [self.helm, "template", "t", str(self.chart), "--namespace", "pkgstream",
               "--kube-version", kube or self.kube_versions[-1]]
        for f in values_files:
            cmd += ["-f", str(f)]
        for s in sets:
            cmd += ["--set", s]
        return self.run(cmd + list(extra))


def docs(rendered):
    return [d for d in yaml.safe_load_all(rendered) if d]


def by_kind(manifests, kind):
    return [d for d in manifests if d.get("kind") == kind]


def config_toml(manifests):
    (cm,) = by_kind(manifests, "ConfigMap")
    return cm["data"]["pkgstream.toml"]


def config_check(t, toml_text, what):
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(toml_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PKGSTREAM__")}
    r = subprocess.run([t.pkgstream, "config", "check", f.name], capture_output=True, text=True, env=env)
    os.unlink(f.name)
    return report(r.returncode == 0, f"{what}: pkgstream config check accepts the ConfigMap", r.stderr.strip())


def kube_validate(t, rendered, kube, what):
    """kubernetes-validate --strict; True when every object passed."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(rendered)
    r = subprocess.run([t.validate, "--strict", "--quiet", "-k", kube, f.name], capture_output=True, text=True)
    os.unlink(f.name)
    out = (r.stdout + r.stderr).strip()
    # The only tolerated warnings: the two prometheus-operator kinds (no schema shipped; checked below).
    lines = [l for l in out.splitlines() if l.strip()]
    unexpected = [l for l in lines if not re.search(r"Couldn't find schema for kind (PrometheusRule|ServiceMonitor) ", l)]
    return r.returncode == 0 and not unexpected, "\n".join(unexpected)


def check_operator_objects(manifests, what):
    for sm in by_kind(manifests, "ServiceMonitor"):
        spec = sm.get("spec", {})
        ok = (sm.get("apiVersion") == "monitoring.coreos.com/v1"
              and spec.get("selector", {}).get("matchLabels")
              and spec.get("endpoints") and all(e.get("port") == "metrics" for e in spec["endpoints"]))
        report(bool(ok), f"{what}: ServiceMonitor selects the metrics ports", json.dumps(spec))
    for pr in by_kind(manifests, "PrometheusRule"):
        groups = pr.get("spec", {}).get("groups") or []
        ok = pr.get("apiVersion") == "monitoring.coreos.com/v1" and groups and all(
            g.get("name") and g.get("rules") and all(("alert" in r) != ("record" in r) and r.get("expr") for r in g["rules"])
            for g in groups)
        report(bool(ok), f"{what}: PrometheusRule is well-formed", json.dumps(groups)[:300])


def rules_equal_alerts(manifests, alerts_path):
    """The PrometheusRule's groups are alerts.yml's, exactly (parsed)."""
    (pr,) = by_kind(manifests, "PrometheusRule")
    source = yaml.safe_load(Path(alerts_path).read_text())
    return pr["spec"]["groups"] == source["groups"]


def promtool_rules(t, manifests, what):
    (pr,) = by_kind(manifests, "PrometheusRule")
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump({"groups": pr["spec"]["groups"]}, f)
    r = subprocess.run([t.promtool, "check", "rules", f.name], capture_output=True, text=True)
    os.unlink(f.name)
    report(r.returncode == 0, f"{what}: promtool check rules on the PrometheusRule", (r.stdout + r.stderr).strip())


def values_case(t, name, values_files, sets=()):
    """Lint, render for each Kubernetes version, validate, config check."""
    r = t.run([t.helm, "lint", "--strict", str(t.chart), "--kube-version", t.kube_versions[-1]]
              + [a for f in values_files for a in ("-f", str(f))]
              + [a for s in sets for a in ("--set", s)])
    report(r.returncode == 0, f"{name}: helm lint --strict", (r.stdout + r.stderr).strip()[-800:])
    manifests = None
    for kube in t.kube_versions:
        r = t.template(values_files, sets, kube)
        if not report(r.returncode == 0, f"{name}: helm template (Kubernetes {kube})", r.stderr.strip()):
            continue
        ok, detail = kube_validate(t, r.stdout, kube, name)
        report(ok, f"{name}: kubernetes-validate --strict -k {kube}", detail)
        manifests = docs(r.stdout)
    if manifests is not None:
        config_check(t, config_toml(manifests), name)
        check_operator_objects(manifests, name)
    return manifests


def example_keys(text):
    """(section, key) of the example TOML, commented-out keys included."""
    keys, section = set(), None
    for line in text.splitlines():
        m = re.match(r"^\[([a-z_.]+)\]\s*$", line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"^#?\s?([a-z_]+) = ", line)
        if m and section:
            keys.add((section, m.group(1)))
    return keys


def schema_keys(schema, section=None):
    """(section, key) of the schema's `config`; sub-tables as "search_sink.tls"."""
    out = set()
    for key, s in schema["properties"].items():
        if section is None:
            out |= schema_keys(s, key)
        elif s.get("type") == "object" and "properties" in s:
            out |= schema_keys(s, f"{section}.{key}")
        else:
            out.add((section, key))
    return out


def every_setting(t, work):
    """The example TOML through `config:` and back: every key reachable, values intact."""
    example_path = t.repo / "config/pkgstream.example.toml"
    example = tomllib.loads(example_path.read_text())
    schema = json.loads((t.chart / "values.schema.json").read_text())
    ex_keys = example_keys(example_path.read_text())
    in_schema = schema_keys(schema["properties"]["config"])
    missing = sorted(ex_keys - set(NOT_IN_CONFIG) - in_schema)
    extra = sorted(in_schema - ex_keys)
    report(not missing and not extra,
           "values.schema.json `config` keys = config/pkgstream.example.toml keys minus the chart-owned and secret ones",
           f"add to values.schema.json (or, if a secret, to SECRET_KEYS in helm/tests/check.py): {missing}; "
           f"not in the example: {extra}")
    wanted = copy.deepcopy(example)
    wanted["router"]["hosts_file"] = "/etc/pkgstream/hosts/hosts.csv"  # commented out in the example
    values = copy.deepcopy(wanted)
    for (section, key) in NOT_IN_CONFIG:
        table = values
        for part in section.split("."):
            table = table.get(part, {})
        table.pop(key, None)
    vf = work / "every-setting.yaml"
    vf.write_text(yaml.safe_dump({"config": values}))
    manifests = values_case(t, "every setting of config/pkgstream.example.toml", [vf])
    if manifests is None:
        return
    rendered = tomllib.loads(config_toml(manifests))
    expected = copy.deepcopy(values)
    for section, port in PORTS.items():
        expected[section]["metrics_listen"] = f"0.0.0.0:{port}"
    report(rendered == expected, "every setting: the ConfigMap's TOML equals the values given (plus metrics_listen)",
           json.dumps({"rendered": rendered, "expected": expected})[:1200])
    # The same comparison must catch a change.
    changed = copy.deepcopy(rendered)
    changed["router"]["batch_events"] += 1
    report(changed != expected, "every setting: the TOML comparison catches a changed value")


def refused_cases(t):
    files = sorted((t.repo / "helm/tests/refused").glob("*.yaml"))
    report(len(files) > 0, "refused values files exist")
    expects = {f: re.match(r"^# expect: (.+)$", f.read_text().splitlines()[0]) for f in files}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        runs = dict(zip(files, pool.map(lambda f: t.template([f]), files)))
    for f in files:
        m = expects[f]
        if not report(bool(m), f"refused/{f.name}: has an '# expect: TEXT' first line"):
            continue
        r = runs[f]
        report(r.returncode != 0 and m.group(1) in r.stderr,
               f"refused/{f.name}: helm template refuses it, naming '{m.group(1)}'",
               f"exit {r.returncode}: {r.stderr.strip()[:400]}")


def notes_cases(t, work):
    # `helm install --dry-run` needs a cluster: render NOTES.txt through a
    # copy of the chart where a template passes it to `tpl`.
    chart = work / "notes-chart"
    subprocess.run(["cp", "-rL", str(t.chart), str(chart)], check=True)
    (chart / "files").mkdir(exist_ok=True)
    (chart / "templates/NOTES.txt").rename(chart / "files/notes.txt")
    (chart / "templates/notes-preview.yaml").write_text('notes: {{ tpl (.Files.Get "files/notes.txt") . | toJson }}\n')

    def notes(sets):
        r = t.run([t.helm, "template", "t", str(chart), "--namespace", "pkgstream",
                   "--kube-version", t.kube_versions[-1], "--show-only", "templates/notes-preview.yaml"]
                  + [a for s in sets for a in ("--set", s)])
        if r.returncode != 0:
            return None, r.stderr
        return yaml.safe_load(r.stdout)["notes"], ""
    ok_notes, err = notes(["router.replicas=3", "router.rawPartitions=3"])
    report(ok_notes is not None and "WARNING" not in ok_notes and "transactional ids t-pkgstream-router-0..2" in ok_notes,
           "NOTES.txt: 3 replicas over 3 partitions, no warning, names the transactional ids", err or ok_notes)
    warn_notes, err = notes(["router.replicas=4", "router.rawPartitions=3"])
    report(warn_notes is not None and "router.replicas (4) > router.rawPartitions (3)" in warn_notes,
           "NOTES.txt: 4 replicas over 3 partitions warns", err or warn_notes)


def containerfile_case(t, values):
    """The image recipe agrees with the chart: the binary it builds is the one
    it copies and the pods run, its user is the chart's non-root uid."""
    text = (t.repo / "Containerfile").read_text()
    froms = re.findall(r"^FROM (\S+)(?: AS (\S+))?$", text, re.M)
    report(len(froms) >= 2 and froms[0][1], "Containerfile: multi-stage (a named build stage, then the runtime)", str(froms))
    build = re.search(r"cargo build --release --locked --bin (\S+)", text)
    copy_ = re.search(r"^COPY --from=\S+ /src/target/release/(\S+) (\S+)$", text, re.M)
    entry = re.search(r'^ENTRYPOINT \["([^"]+)"\]$', text, re.M)
    report(bool(build and copy_ and entry) and build.group(1) == copy_.group(1) == "pkgstream"
           and copy_.group(2) == entry.group(1),
           "Containerfile: builds, copies and runs the pkgstream binary",
           f"build {build and build.group(0)}, copy {copy_ and copy_.group(0)}, entrypoint {entry and entry.group(1)}")
    user = re.findall(r"^USER (\d+):(\d+)$", text, re.M)
    psc = values["podSecurityContext"]
    report(len(user) == 1 and user[0][0] != "0" and int(user[0][0]) == psc["runAsUser"] and int(user[0][1]) == psc["runAsGroup"],
           "Containerfile: a numeric non-root USER, the chart's runAsUser/runAsGroup", f"USER {user}, chart {psc}")
    return build.group(0) if build else None


def value_paths(d, prefix=""):
    """Documented value paths of values.yaml: leaves, and maps that are one
    value (config, resources, the security contexts, empty maps)."""
    whole = {"config", "podSecurityContext", "securityContext"}
    for k, v in d.items():
        path = prefix + k
        if isinstance(v, dict) and v and path not in whole and not path.endswith(".resources"):
            yield from value_paths(v, path + ".")
        else:
            yield path


def readme_case(t):
    values = yaml.safe_load((t.chart / "values.yaml").read_text())
    readme = (t.repo / "helm/README.md").read_text()
    missing = [p for p in value_paths(values) if f"`{p}`" not in readme]
    report(not missing, "helm/README.md documents every value of values.yaml", f"missing: {missing}")


def main():
    p = argparse.ArgumentParser()
    for a in ["helm", "kubernetes-validate", "promtool", "pkgstream", "chart", "repo", "kube-versions"]:
        p.add_argument("--" + a, required=True)
    p.add_argument("--release-build", action="store_true",
                   help="also run the Containerfile's cargo build and check the ConfigMaps with that binary")
    args = p.parse_args()
    t = Tools(args)
    tests = t.repo / "helm/tests"
    build_cmd = containerfile_case(t, yaml.safe_load((t.chart / "values.yaml").read_text()))
    if args.release_build and build_cmd:
        r = subprocess.run(build_cmd.split(), cwd=t.repo)
        if report(r.returncode == 0, f"the Containerfile's build step: {build_cmd}"):
            t.pkgstream = str(t.repo / "target/release/pkgstream")
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        values_case(t, "default values", [])
        values_case(t, "minimal", [tests / "minimal.yaml"])
        prod = values_case(t, "production", [tests / "production.yaml"])
        if prod is not None:
            report(len(by_kind(prod, "PrometheusRule")) == 1 and len(by_kind(prod, "ServiceMonitor")) == 1
                   and len(by_kind(prod, "NetworkPolicy")) == 3,
                   "production: one PrometheusRule, one ServiceMonitor, three NetworkPolicies")
            (sts,) = by_kind(prod, "StatefulSet")
            env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
            report(sts["spec"]["replicas"] == 3
                   and env["PKGSTREAM__ROUTER__TRANSACTIONAL_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name",
                   "production: 3 router replicas, transactional id from the pod name")
            secret_text = "\n".join(json.dumps(d) for d in by_kind(prod, "ConfigMap"))
            report("secretKeyRef" not in secret_text and "pkgstream-engine" not in secret_text,
                   "production: no secret reference in the ConfigMap")
            alerts = t.repo / "sinks/prometheus/alerts.yml"
            report(rules_equal_alerts(prod, alerts), "production: PrometheusRule groups equal sinks/prometheus/alerts.yml")
            promtool_rules(t, prod, "production")
            # The comparison must catch a change of the source.
            mutated = work / "alerts.yml"
            mutated.write_text(alerts.read_text().replace("for: 6h", "for: 7h", 1))
            report(mutated.read_text() != alerts.read_text() and not rules_equal_alerts(prod, mutated),
                   "the PrometheusRule comparison catches a changed alerts.yml")
            # kubernetes-validate must catch an unknown field (strict mode is on).
            bad = copy.deepcopy(sts)
            bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {"path": "/"}
            ok, _ = kube_validate(t, yaml.safe_dump(bad), t.kube_versions[0], "mutated")
            report(not ok, "kubernetes-validate --strict refuses an unknown field")
        every_setting(t, work)
        readme_case(t)
        refused_cases(t)
        notes_cases(t, work)
    n = len(failures)
    if n:
        print(f"[helm-check] failed: {'; '.join(failures)}")
    print(f"helm-check: {len(passed)} passed, {n} failed")
    return 1 if n else 0


if __name__ == "__main__":
    sys.exit(main())
