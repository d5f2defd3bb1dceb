"""The Helm chart (charts/waypost), rendered offline and checked the way a cluster would.

* Rendering and linting use the Helm SDK from PyPI (`helm-python-sdk`, imported as `helm_python`):
  Helm's Go SDK compiled into a shared library shipped in the wheel, so neither a helm binary nor
  a cluster is involved. Rendering also applies values.schema.json, as `helm install` does.
* Every rendered manifest is validated with `kubernetes-validate` in strict mode (unknown fields
  are errors) against Kubernetes 1.29 — the oldest version native sidecars work on — and against
  the newest schemas the package ships. The ServiceMonitor is a Prometheus Operator CRD that
  kubernetes-validate has no schema for: it is skipped there and checked structurally by
  `test_service_monitor_structure` instead.
* Schemas do not see how objects refer to each other, so `check_pod` asserts that too (mounts name
  volumes, probes hit the declared admin port, Services select the pods, ...).
* The waypost config inside each rendered ConfigMap goes through `$WAYPOST_BIN check` (default
  target/debug/waypost) with the environment the pod gives it (downward API values faked).

Run with tests/helm/run.sh: it creates .venv, installs requirements.txt and builds waypost.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "waypost"
VALUES = Path(__file__).resolve().parent / "values"
RELEASE, NAMESPACE = "demo", "shop"

#: Oldest supported version for native sidecars, and the newest schema set kubernetes-validate has.
KUBE_VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]

#: Lint findings accepted, by message, with the reason. Anything else a lint reports — an error,
#: a warning or an info — fails `test_lint`.
DOCUMENTED_LINT = {
    "icon is recommended": "INFO only: the project publishes no icon URL for Chart.yaml to point at",
}

#: What the downward API gives waypost in a pod, faked for `waypost check`.
DOWNWARD = {"status.podIP": "10.1.2.3", "metadata.name": "demo-7d9c-xk2p", "metadata.namespace": NAMESPACE,
            "status.hostIP": "10.0.0.2"}

#: Kinds kubernetes-validate has no schema for (CRDs), each checked by its own test.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"): "test_service_monitor_structure"}


def load_values(name: str) -> dict:
    """A values file of tests/helm/values, parsed by Helm (the `-f file` path)."""
    return helm.values_from_yaml((VALUES / f"{name}.yaml").read_text())


#: The value sets every rendering test runs over.
VALUE_SETS = {
    "defaults": lambda: {},
    "native": lambda: load_values("native"),
    "classic": lambda: load_values("classic"),
    "service-monitor": lambda: load_values("service-monitor"),
    "raw-config": lambda: load_values("raw-config"),
    # configs/kubernetes.yaml as the raw config: the example must work in the chart as is.
    "kubernetes-example": lambda: {"config": {"raw": (ROOT / "configs" / "kubernetes.yaml").read_text()}},
    "library": lambda: load_values("library"),
    # Every config key the chart's schema knows: waypost must accept them all.
    "every-key": lambda: load_values("every-key"),
}


@pytest.fixture(scope="session")
def chart():
    with helm.Chart.load(CHART) as c:
        yield c


@functools.cache
def rendered(name: str) -> dict[str, str]:
    """Template path -> rendered text, for value set `name` (cached: rendering is pure)."""
    with helm.Chart.load(CHART) as c:
        return c.render(VALUE_SETS[name](), name=RELEASE, namespace=NAMESPACE)


def manifests(name: str) -> list[dict]:
    """Every non-empty Kubernetes object rendered for value set `name` (NOTES.txt excluded)."""
    docs = []
    for path, text in sorted(rendered(name).items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def find(docs: list[dict], kind: str, name: str | None = None) -> dict:
    hits = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in hits]}"
    return hits[0]


def pod_spec(docs: list[dict]) -> dict:
    return find(docs, "Deployment")["spec"]["template"]["spec"]


def waypost_container(spec: dict) -> tuple[dict, bool]:
    """The waypost container and whether it is a native sidecar (an init container)."""
    init = [c for c in spec.get("initContainers") or [] if c["name"] == "waypost"]
    main = [c for c in spec["containers"] if c["name"] == "waypost"]
    assert len(init) + len(main) == 1, "exactly one waypost container"
    return (init[0], True) if init else (main[0], False)


def waypost_config(docs: list[dict], configmap: str = f"{RELEASE}-waypost-config") -> dict:
    return yaml.safe_load(find(docs, "ConfigMap", configmap)["data"]["config.yaml"])


def env_map(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env") or []}


def seconds(duration: str) -> float:
    """A waypost duration ("1m30s", "250ms") in seconds."""
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"([0-9.]+)(ns|us|µs|ms|s|m|h)", duration)
    assert "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def render_error(chart, values: dict) -> str:
    with pytest.raises(helm.HelmError) as e:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return str(e.value)


# --- lint -----------------------------------------------------------------------------------------


def undocumented(report: dict) -> list[dict]:
    return [m for m in report["messages"] if not any(d in m["error"] for d in DOCUMENTED_LINT)]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint(name):
    report = helm.lint(CHART, VALUE_SETS[name](), namespace=NAMESPACE)
    assert report["errors"] == [], report
    assert undocumented(report) == [], f"lint findings not in DOCUMENTED_LINT: {undocumented(report)}"


def test_lint_strict_defaults():
    report = helm.lint(CHART, strict=True, namespace=NAMESPACE)
    assert report["errors"] == [] and undocumented(report) == [], report


def render_for_kube(values: dict, kube: str) -> dict[str, str]:
    """Renders as for a cluster of version `kube` (`helm template --kube-version`).

    helm-python-sdk 0.2.2's Chart.render does not expose the option, but the render options of
    the libhelm_c it wraps take "kube_version"; `test_native_sidecar_refused_before_1_29` shows
    it is honoured. (helm lint's kube_version is no substitute: Helm 4's lint logs a template's
    `fail` instead of reporting it.)
    """
    from helm_python import _native

    options = {"name": RELEASE, "namespace": NAMESPACE, "kube_version": kube}
    with helm.Chart.load(CHART) as c:
        return json.loads(_native.call_string("helm_render", c._raw(), json.dumps(values), json.dumps(options)))


def kube_render_error(values: dict, kube: str) -> str:
    with pytest.raises(helm.HelmRenderError) as e:
        render_for_kube(values, kube)
    return str(e.value)


def test_native_sidecar_on_1_29():
    spec = pod_spec([d for t in render_for_kube(load_values("native"), "v1.29.0").values() if t.lstrip().startswith("apiVersion")
                     for d in yaml.safe_load_all(t) if d])
    assert waypost_container(spec)[1]


def test_native_sidecar_refused_before_1_29():
    message = kube_render_error(load_values("native"), "v1.28.4")
    assert "sidecar.native needs Kubernetes >= 1.29" in message and "v1.28.4" in message


def test_prestop_sleep_refused_before_1_30_with_a_way_out():
    message = kube_render_error({}, "v1.29.0")
    assert "preStop sleep action, which needs Kubernetes >= 1.30" in message
    # Both ways out the message names work.
    render_for_kube({"sidecar": {"native": True}}, "v1.29.0")
    hook = {"preStop": {"exec": {"command": ["/bin/sleep", "5"]}}}
    render_for_kube({"sidecar": {"preStopSleepSeconds": 0}, "waypost": {"lifecycle": hook}}, "v1.29.0")


# --- manifests against the Kubernetes schemas ----------------------------------------------------


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("name", VALUE_SETS)
def test_manifests_validate(name, kube):
    docs = manifests(name)
    assert docs, "nothing rendered"
    checked = 0
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            # Skipped because kubernetes-validate has no schema for it; should it gain one, this
            # fails and the skip can go.
            with pytest.raises(kubernetes_validate.utils.SchemaNotFoundError):
                kubernetes_validate.validate(doc, kube, strict=True)
            continue
        try:
            kubernetes_validate.validate(doc, kube, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {kube}: {where}: {e.message}")
        checked += 1
    assert checked


def test_validation_is_strict():
    """Guards the guard: an unknown field must fail, or strict mode is not on."""
    deployment = copy.deepcopy(find(manifests("defaults"), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][1]["restartPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)


# --- how the objects fit together ------------------------------------------------------------------


def check_pod(docs: list[dict]) -> None:
    """What the schemas cannot see: references between objects and the sidecar's contract."""
    deployment = find(docs, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    containers = (spec.get("initContainers") or []) + spec["containers"]
    names = [c["name"] for c in containers]
    assert len(names) == len(set(names)), f"duplicate container names {names}"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert len(volumes) == len(spec["volumes"]), "duplicate volume names"
    for c in containers:
        for m in c.get("volumeMounts") or []:
            assert m["name"] in volumes, f"{c['name']} mounts unknown volume {m['name']}"
        env_names = [e["name"] for e in c.get("env") or []]
        assert len(env_names) == len(set(env_names)), f"{c['name']} has duplicate env {env_names}"
    ports = [p["containerPort"] for c in containers for p in c.get("ports") or []]
    assert len(ports) == len(set(ports)), f"two containers declare the same port: {ports}"

    wp, native = waypost_container(spec)
    # The ConfigMap it mounts is rendered, and holds the config.
    cm_name = volumes["waypost-config"]["configMap"]["name"]
    config = waypost_config(docs, cm_name)
    assert "emptyDir" in volumes["waypost-run"]
    mounts = {m["mountPath"]: m for m in wp["volumeMounts"]}
    assert mounts["/etc/waypost"]["readOnly"] is True and mounts["/etc/waypost"]["name"] == "waypost-config"
    assert mounts["/var/run/waypost"]["name"] == "waypost-run"
    # The only writable directory holds the file registry.
    assert (config["registry"]["file"]["dir"] + "/").startswith("/var/run/waypost/")
    assert wp["args"] == ["run", "--config", "/etc/waypost/config.yaml"]

    # Hardened.
    sc = wp["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert wp["resources"]["requests"] and wp["resources"]["limits"]["memory"]

    # Downward API.
    field_refs = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in wp["env"] if "valueFrom" in e}
    assert field_refs == {"POD_IP": "status.podIP", "POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace",
                          "HOST_IP": "status.hostIP"}

    # Probes, the declared port, the config and the scrape annotations agree on the admin port.
    admin_port = int(re.search(r"([0-9]+)$", config["admin"]["listen"]).group(1))
    assert [p["containerPort"] for p in wp["ports"] if p["name"] == "waypost-admin"] == [admin_port]
    assert (wp["readinessProbe"]["httpGet"], wp["livenessProbe"]["httpGet"]) == (
        {"path": "/ready", "port": admin_port},
        {"path": "/live", "port": admin_port},
    )
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/waypost-config"]
    if annotations.get("prometheus.io/scrape") == "true":
        assert annotations["prometheus.io/port"] == str(admin_port)
        assert annotations["prometheus.io/path"] == "/metrics"

    # The sidecar contract of each layout.
    if native:
        assert wp["restartPolicy"] == "Always"
        assert wp["startupProbe"]["httpGet"] == {"path": "/ready/outbound", "port": admin_port}
        assert spec["initContainers"][0]["name"] == "waypost", "waypost must start before other init containers"
        assert "lifecycle" not in wp, "a native sidecar is stopped after the app: no preStop needed"
    else:
        assert "restartPolicy" not in wp and "startupProbe" not in wp
        sleep = wp["lifecycle"]["preStop"]["sleep"]["seconds"]
        grace = seconds(config.get("shutdown", {}).get("grace", "10s"))
        assert sleep + grace <= spec.get("terminationGracePeriodSeconds", 30), "preStop sleep + shutdown.grace must fit"

    # Services select the pods and target declared ports.
    app_port_names = {p.get("name") for c in spec["containers"] for p in c.get("ports") or []}
    for svc in (d for d in docs if d["kind"] == "Service"):
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        for p in svc["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            assert target in app_port_names or target in ports, f"{svc['metadata']['name']} targets {target}"
    sa = spec.get("serviceAccountName")
    if sa and sa != "default":
        find(docs, "ServiceAccount", sa)


@pytest.mark.parametrize("name", [n for n in VALUE_SETS if n != "library"])
def test_pod_fits_together(name):
    check_pod(manifests(name))


def test_defaults():
    docs = manifests("defaults")
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment", "Service", "ServiceAccount"]
    spec = pod_spec(docs)
    wp, native = waypost_container(spec)
    assert not native and [c["name"] for c in spec["containers"]] == ["app", "waypost"]
    assert wp["lifecycle"]["preStop"]["sleep"]["seconds"] == 5
    assert wp["image"] == "waypost/waypost:0.1.0"
    config = waypost_config(docs)
    assert config["admin"]["listen"] == "0.0.0.0:4191" and config["listen"] == "127.0.0.1:4140"
    assert config["discovery"]["on_demand"] == [{"suffix": ".svc.cluster.local", "resolver": {"dns": {"port": 80}}}]
    app = spec["containers"][0]
    assert env_map(app) == {"WAYPOST_URL": "http://127.0.0.1:4140"}, "no HTTP_PROXY unless asked for"


def test_native_sidecar():
    spec = pod_spec(manifests("native"))
    wp, native = waypost_container(spec)
    assert native and [c["name"] for c in spec["containers"]] == ["app"]
    assert wp["startupProbe"]["failureThreshold"] * wp["startupProbe"]["periodSeconds"] >= 60


def test_classic_sidecar_and_app_env():
    docs = manifests("classic")
    spec = pod_spec(docs)
    wp, native = waypost_container(spec)
    assert not native and wp["lifecycle"] == {"preStop": {"sleep": {"seconds": 7}}}
    app = spec["containers"][0]
    assert env_map(app) == {
        "WAYPOST_URL": "http://127.0.0.1:4140",
        "WAYPOST_BILLING_API_URL": "http://127.0.0.1:18082",  # 0.0.0.0 is dialled on loopback
        "WAYPOST_ECHO_URL": "http://127.0.0.1:18081",
        "WAYPOST_ORDERS_SHOP_URL": "http://orders.shop",  # no own listener: through HTTP_PROXY
        "HTTP_PROXY": "http://127.0.0.1:4140",
        "http_proxy": "http://127.0.0.1:4140",
        "NO_PROXY": "localhost,127.0.0.1,::1,kubernetes.default.svc",
        "no_proxy": "localhost,127.0.0.1,::1,kubernetes.default.svc",
        "APP_MODE": "demo",
    }


def test_lifecycle_override_replaces_prestop_sleep():
    hook = {"preStop": {"httpGet": {"path": "/ready", "port": 4191}}}
    wp, _ = waypost_container(pod_spec(manifests_for({"waypost": {"lifecycle": hook}})))
    assert wp["lifecycle"] == hook


def test_raw_config_is_verbatim_and_drives_the_pod():
    docs = manifests("raw-config")
    raw = load_values("raw-config")["config"]["raw"]
    assert find(docs, "ConfigMap", f"{RELEASE}-waypost-config")["data"]["config.yaml"] == raw
    spec = pod_spec(docs)
    wp, _ = waypost_container(spec)
    assert wp["readinessProbe"]["httpGet"]["port"] == 9901
    annotations = find(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9901"
    assert env_map(spec["containers"][0]) == {
        "WAYPOST_URL": "http://127.0.0.1:4150",
        "WAYPOST_ECHO_URL": "http://127.0.0.1:18081",
    }


def test_config_change_rolls_the_pods():
    def checksum(values):
        return find(manifests_for(values), "Deployment")["spec"]["template"]["metadata"]["annotations"][
            "checksum/waypost-config"]

    assert checksum({}) != checksum({"config": {"log": {"level": "debug"}}})


def test_admin_listener_on_loopback_is_refused(chart):
    message = render_error(chart, {"config": {"admin": {"listen": "127.0.0.1:4191"}}})
    assert "config.admin.listen is 127.0.0.1:4191" in message and "0.0.0.0:4191" in message


def test_invalid_raw_yaml_is_refused(chart):
    assert "config.raw is not valid YAML" in render_error(chart, {"config": {"raw": "listen: [unclosed\n"}})


def test_service_monitor_on():
    docs = manifests("service-monitor")
    annotations = find(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert not any(k.startswith("prometheus.io/") for k in annotations), "podAnnotations: false"
    metrics_svc = find(docs, "Service", f"{RELEASE}-waypost-metrics")
    assert metrics_svc["spec"]["clusterIP"] == "None"
    assert metrics_svc["spec"]["ports"] == [
        {"name": "waypost-admin", "port": 4191, "targetPort": 4191, "protocol": "TCP"}]
    app_svc = find(docs, "Service", f"{RELEASE}-waypost")
    assert all(p["name"] != "waypost-admin" for p in app_svc["spec"]["ports"]), "admin port stays off the app Service"


def test_service_monitor_needs_the_deployment():
    """It selects this chart's pods: with deployment.enabled false (the sidecar in another chart's
    pods) there are none, so neither it nor the metrics Service renders (values.yaml says so)."""
    docs = manifests_for({**load_values("library"), "metrics": {"serviceMonitor": {"enabled": True}}})
    assert sorted(d["kind"] for d in docs) == ["ConfigMap"]


#: The part of the ServiceMonitor CRD (monitoring.coreos.com/v1) the chart uses, strict: enough to
#: catch a misspelt or misplaced field, which the API server would reject (or silently drop).
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object", "required": ["name", "namespace"],
            "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                           "namespace": {"type": "string"},
                           "labels": {"type": "object", "additionalProperties": {"type": "string"}}},
        },
        "spec": {
            "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "selector": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                                   "matchExpressions": {"type": "array"}},
                },
                "endpoints": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "targetPort": {"type": ["integer", "string"]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array", "items": {"$ref": "#/$defs/relabel"}},
                            "metricRelabelings": {"type": "array", "items": {"$ref": "#/$defs/relabel"}},
                        },
                    },
                },
            },
        },
    },
    "$defs": {
        "relabel": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod",
                                    "labelmap", "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep",
                                    "lowercase", "Lowercase", "uppercase", "Uppercase", "keepequal", "KeepEqual",
                                    "dropequal", "DropEqual"]},
                "sourceLabels": {"type": "array", "items": {"type": "string"}},
                "separator": {"type": "string"}, "targetLabel": {"type": "string"}, "regex": {"type": "string"},
                "modulus": {"type": "integer"}, "replacement": {"type": "string"},
            },
        },
    },
}


def test_service_monitor_structure():
    docs = manifests("service-monitor")
    sm = find(docs, "ServiceMonitor")
    jsonschema.Draft202012Validator(SERVICE_MONITOR_SCHEMA).validate(sm)
    # It selects the metrics Service, by a port that Service names, in the release namespace.
    selected = [d for d in docs if d["kind"] == "Service"
                and sm["spec"]["selector"]["matchLabels"].items() <= d["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in selected] == [f"{RELEASE}-waypost-metrics"]
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["metadata"]["labels"]["release"] == "prometheus"


# --- the Grafana dashboard -------------------------------------------------------------------------


def metric_families() -> set[str]:
    """Metric families waypost registers (src/metrics.rs is where every family is defined)."""
    source = ROOT / "src" / "metrics.rs"
    assert source.exists(), f"{source} is missing: the dashboard is checked against it"
    return set(re.findall(r'Opts::new\(\s*"(waypost_[a-z0-9_]+)"', source.read_text()))


def test_dashboard():
    dashboard = json.loads((CHART / "dashboards" / "waypost.json").read_text())
    panels = {p["title"]: p for p in dashboard["panels"]}
    for title in ["Request rate", "Error rate", "Latency quantiles", "Instances per service", "Table age per service"]:
        assert title in panels, f"dashboard lacks panel {title!r}"
    exprs = {t: [x["expr"] for x in p["targets"]] for t, p in panels.items()}
    assert any("waypost_forward_errors_total" in e for e in exprs["Error rate"])
    assert any('class="5xx"' in e for e in exprs["Error rate"])
    assert all(e.startswith("histogram_quantile(") for e in exprs["Latency quantiles"])
    assert len(exprs["Latency quantiles"]) >= 3
    assert "waypost_discovery_instances" in exprs["Instances per service"][0]
    assert "waypost_discovery_table_age_seconds" in exprs["Table age per service"][0]
    # Every metric queried is one waypost exports.
    families = metric_families()
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for e in sum(exprs.values(), []) for m in re.findall(r"waypost_[a-z0-9_]+", e)}
    used |= {m for v in dashboard["templating"]["list"] for m in re.findall(r"waypost_[a-z0-9_]+", json.dumps(v))}
    assert used <= families, f"dashboard queries metrics waypost does not export: {sorted(used - families)}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_queries_parse(tmp_path):
    """Every query is valid PromQL, as promtool parses it (Grafana's variables substituted)."""
    promtool = shutil.which("promtool")
    if not promtool:
        # A missing tool fails, as in every other test here: a skip would pass silently.
        pytest.fail("promtool not found: `make deps` (scripts/install-deps.sh) installs it")
    dashboard = json.loads((CHART / "dashboards" / "waypost.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    # Template variables query label_values(<selector>, <label>): the selector is PromQL.
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            exprs.append(re.fullmatch(r"label_values\((.+),\s*\w+\)", v["definition"]).group(1))
    grafana = {"$__rate_interval": "1m", "$namespace": ".*", "$service": ".*"}
    rules = []
    for i, expr in enumerate(exprs):
        for var, value in grafana.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"unsubstituted variable in {expr}"
        rules.append({"record": f"waypost:dashboard_query:{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_configmap():
    cm = find(manifests("service-monitor"), "ConfigMap", f"{RELEASE}-waypost-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert json.loads(cm["data"]["waypost.json"]) == json.loads((CHART / "dashboards" / "waypost.json").read_text())
    assert not [d for d in manifests("defaults") if d["metadata"]["name"].endswith("-dashboard")], "off by default"


# --- values.schema.json ----------------------------------------------------------------------------


def test_bad_values_file_is_rejected_with_clear_messages(chart):
    message = render_error(chart, load_values("bad"))
    for expected in [
        "values don't meet the specifications of the schema",
        "at '/sidecar/native': got string, want boolean",
        "at '/sidecar': additional properties 'preStopSeconds' not allowed",
        "at '/config/shutdown/grace': got number, want string",
        "at '/config/services/users/listen': 'localhost:18081' does not match pattern",
    ]:
        assert expected in message, f"{expected!r} not in:\n{message}"
    # lint reports the same, as errors.
    assert helm.lint(CHART, load_values("bad"))["errors"]


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"sidecar": {"nativ": True}}, "at '/sidecar': additional properties 'nativ' not allowed"),
        ({"config": {"discovery": {"refresh_interval": "5 seconds"}}}, "at '/config/discovery/refresh_interval': '5 seconds' does not match pattern"),
        ({"config": {"services": {"Users": {"resolver": {"file": {}}}}}}, "'Users' does not match pattern '^[a-z0-9][a-z0-9._-]*$'"),
        ({"config": {"services": {"a": {"resolver": {"file": {}, "dns": {"port": 80}}}}}}, "at '/config/services/a/resolver': maxProperties: got 2, want 1"),
        ({"config": {"services": {"a": {"listen": "127.0.0.1:1"}}}}, "at '/config/services/a': missing property 'resolver'"),
        ({"config": {"log": {"format": "pretty"}}}, "at '/config/log/format': value must be one of 'text', 'json'"),
        ({"config": {"client": {"max_head_size": "64kb"}}}, "at '/config/client/max_head_size': '64kb' does not match pattern"),
        ({"config": {"client": {"max_headers": 0}}}, "at '/config/client/max_headers': minimum: got 0, want 1"),
        ({"config": {"registrar": {}}}, "at '/config': additional properties 'registrar' not allowed"),
        ({"waypost": {"readinessProbe": {"httpGet": {"path": "/"}}}}, "at '/waypost/readinessProbe': additional properties 'httpGet' not allowed"),
        ({"app": {"ports": [{"name": "http", "containerPort": 70000}]}}, "at '/app/ports/0/containerPort': maximum: got 70,000, want 65,535"),
    ],
    ids=["typo", "duration", "service-name", "two-resolvers", "no-resolver", "log-format", "head-size", "max-headers", "unknown-config-key", "probe-handler", "port"],
)
def test_schema_rejects(chart, values, expected):
    message = render_error(chart, values)
    assert expected in message, f"{expected!r} not in:\n{message}"


#: On-demand resolvers waypost refuses (`discovery.on_demand[].resolver`: the rule resolves the
#: requested host, so only `{dns: {port, weight}}` or `{file: {}}`), each with the schema's message.
ON_DEMAND_REFUSED = {
    "static": ({"static": {"instances": [{"address": "10.0.0.10:8080"}]}}, "at '/config/discovery/on_demand/0/resolver': additional properties 'static' not allowed"),
    "dns-name": ({"dns": {"name": "users.shop.svc.cluster.local", "port": 8080}}, "at '/config/discovery/on_demand/0/resolver/dns': additional properties 'name' not allowed"),
    "dns-srv": ({"dns": {"srv": "_http._tcp.users.shop.svc.cluster.local"}}, "at '/config/discovery/on_demand/0/resolver/dns': additional properties 'srv' not allowed"),
    "dns-no-port": ({"dns": {"weight": 2}}, "at '/config/discovery/on_demand/0/resolver/dns': missing property 'port'"),
    "file-name": ({"file": {"name": "billing"}}, "at '/config/discovery/on_demand/0/resolver/file': additional properties 'name' not allowed"),
}


def on_demand_values(resolver: dict) -> dict:
    return {"config": {"discovery": {"on_demand": [{"suffix": ".svc.cluster.local", "resolver": resolver}]}}}


def refused_by_schema_and_waypost(chart, values: dict, expected: str, key: str, waypost_bin, tmp_path, env=None):
    """The schema refuses `values` saying `expected`, and is no stricter than waypost: `waypost
    check` refuses the same config (`env`: its environment), naming `key`."""
    message = render_error(chart, values)
    assert expected in message, f"{expected!r} not in:\n{message}"
    result = waypost_check(waypost_bin, yaml.safe_dump(values["config"]), env or {}, tmp_path)
    assert result.returncode == 2 and key in result.stderr, (
        f"waypost check now accepts {values['config']} ({result.returncode}): relax values.schema.json\n"
        f"{result.stderr}")


@pytest.mark.parametrize("case", ON_DEMAND_REFUSED)
def test_schema_rejects_on_demand_resolvers_waypost_refuses_too(chart, case, waypost_bin, tmp_path):
    resolver, expected = ON_DEMAND_REFUSED[case]
    refused_by_schema_and_waypost(chart, on_demand_values(resolver), expected, "discovery.on_demand.0.resolver",
                                  waypost_bin, tmp_path)


@pytest.mark.parametrize("resolver", [{"dns": {"port": 8080, "weight": 2}}, {"dns": {"port": 80}}, {"file": {}}],
                         ids=["dns-port-weight", "dns-port", "file"])
def test_schema_accepts_on_demand_resolvers(chart, resolver):
    chart.render(on_demand_values(resolver), name=RELEASE, namespace=NAMESPACE)


#: A service's DNS resolvers waypost refuses: it needs `port` (A/AAAA of `name`) or `srv` alone.
SERVICE_DNS_REFUSED = {
    "empty": {},
    "weight-only": {"weight": 2},
    "srv-and-port": {"srv": "_http._tcp.users.shop.svc.cluster.local", "port": 80},
    "srv-and-name": {"srv": "_http._tcp.users.shop.svc.cluster.local", "name": "users"},
}


def service_dns_values(dns: dict) -> dict:
    return {"config": {"services": {"users": {"resolver": {"dns": dns}}}}}


@pytest.mark.parametrize("case", SERVICE_DNS_REFUSED)
def test_schema_rejects_service_dns_resolvers_waypost_refuses_too(chart, case, waypost_bin, tmp_path):
    refused_by_schema_and_waypost(chart, service_dns_values(SERVICE_DNS_REFUSED[case]), "/config/services/users/resolver/dns",
                                  "services.users.resolver.dns", waypost_bin, tmp_path)


@pytest.mark.parametrize("dns", [{"port": 80}, {"name": "users.shop", "port": 80, "weight": 3},
                                 {"srv": "_http._tcp.users.shop.svc.cluster.local", "weight": 2}],
                         ids=["port", "name-port-weight", "srv-weight"])
def test_schema_accepts_service_dns_resolvers(chart, dns):
    chart.render(service_dns_values(dns), name=RELEASE, namespace=NAMESPACE)


#: A `register:` entry the schema and waypost accept, and changes to it that both refuse, with the
#: schema's message (None removes the key).
REGISTER_ENTRY = {"service": "shop", "address": "${POD_IP}:8080", "registry": "file", "check": "none"}
REGISTER_REFUSED = {
    "weight-0": ({"weight": 0}, "at '/config/register/0/weight': minimum: got 0, want 1"),
    "no-check": ({"check": None}, "at '/config/register/0': missing property 'check'"),
    "check-word": ({"check": "maybe"}, "at '/config/register/0/check'"),
    "no-probe": ({"check": {"interval": "2s"}}, "at '/config/register/0/check'"),
    "two-probes": ({"check": {"http": "http://127.0.0.1/", "tcp": "127.0.0.1:1"}}, "at '/config/register/0/check'"),
    "rise-0": ({"check": {"tcp": "127.0.0.1:1", "rise": 0}}, "at '/config/register/0/check'"),
    "https": ({"check": {"http": "https://127.0.0.1/"}}, "at '/config/register/0/check'"),
    "registry": ({"registry": "nacos"}, "at '/config/register/0/registry'"),
    "etcd-on-file": ({"etcd": {"layout": "kitex"}}, "at '/config/register/0'"),
    "etcd-layout": ({"registry": "etcd", "etcd": {"layout": "nacos"}}, "at '/config/register/0/etcd/layout'"),
    "etcd-prefix-slash": ({"registry": "etcd", "etcd": {"prefix": "shop/"}}, "at '/config/register/0/etcd/prefix'"),
    "etcd-unknown": ({"registry": "etcd", "etcd": {"lease_ttl": "5s"}}, "at '/config/register/0/etcd'"),
}


def register_values(change: dict) -> dict:
    entry = {**REGISTER_ENTRY, **change}
    return {"config": {"register": [{k: v for k, v in entry.items() if v is not None}]}}


@pytest.mark.parametrize("case", REGISTER_REFUSED)
def test_schema_rejects_register_entries_waypost_refuses_too(chart, case, waypost_bin, tmp_path):
    change, expected = REGISTER_REFUSED[case]
    refused_by_schema_and_waypost(chart, register_values(change), expected, "register", waypost_bin, tmp_path,
                                  env={"POD_IP": "10.1.2.3"})


@pytest.mark.parametrize("check", ["none", {"http": "http://127.0.0.1:8080/healthz"},
                                   {"tcp": "127.0.0.1:8080", "interval": "500ms", "timeout": "100ms", "rise": 1, "fall": 1}],
                         ids=["none", "http", "tcp"])
def test_schema_accepts_register_checks(chart, check):
    chart.render(register_values({"check": check}), name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("change", [{"registry": "etcd"}, {"registry": "etcd", "etcd": {}},
                                    {"registry": "etcd", "etcd": {"layout": "grpc", "prefix": ""}}],
                         ids=["etcd", "etcd-empty-block", "etcd-grpc-empty-prefix"])
def test_schema_accepts_etcd_register_entries(chart, change, waypost_bin, tmp_path):
    values = register_values(change)
    chart.render(values, name=RELEASE, namespace=NAMESPACE)
    result = waypost_check(waypost_bin, yaml.safe_dump(values["config"]), {"POD_IP": "10.1.2.3"}, tmp_path)
    assert result.returncode == 0, result.stderr


def test_notes_point_at_the_registrations():
    assert "/debug/registrations" in rendered("every-key")["waypost/templates/NOTES.txt"]
    assert "/debug/registrations" not in rendered("defaults")["waypost/templates/NOTES.txt"]
#: etcd settings waypost refuses, each with where the schema refuses it and the key waypost names.
ETCD_REFUSED = {
    "no-endpoints": ({"registry": {"etcd": {"endpoints": []}}}, "/config/registry/etcd/endpoints", "registry.etcd.endpoints"),
    "endpoint-without-port": ({"registry": {"etcd": {"endpoints": ["etcd-0.etcd"]}}}, "/config/registry/etcd/endpoints/0", "registry.etcd.endpoints.0"),
    "tls-without-ca": ({"registry": {"etcd": {"tls": {"cert": "/c.pem", "key": "/k.pem"}}}}, "/config/registry/etcd/tls", "registry.etcd.tls"),
    "layout": ({"registry": {"etcd": {"layout": "nacos"}}}, "/config/registry/etcd/layout", "registry.etcd.layout"),
    "prefix-slash": ({"services": {"users": {"resolver": {"etcd": {"prefix": "kitex/"}}}}}, "/config/services/users/resolver/etcd/prefix", "services.users.resolver.etcd.prefix"),
    "name-slash": ({"services": {"users": {"resolver": {"etcd": {"name": "shop/users"}}}}}, "/config/services/users/resolver/etcd/name", "services.users.resolver.etcd.name"),
    "on-demand-name": ({"discovery": {"on_demand": [{"suffix": ".etcd.local", "resolver": {"etcd": {"name": "x"}}}]}}, "/config/discovery/on_demand/0/resolver/etcd", "discovery.on_demand.0.resolver.etcd"),
}


#: Consul settings waypost refuses, each with where the schema refuses it and the key waypost names.
CONSUL_REFUSED = {
    "address-with-scheme": ({"registry": {"consul": {"address": "http://consul:8500"}}}, "/config/registry/consul/address", "registry.consul.address"),
    "address-without-port": ({"registry": {"consul": {"address": "consul"}}}, "/config/registry/consul/address", "registry.consul.address"),
    "scheme": ({"registry": {"consul": {"scheme": "ftp"}}}, "/config/registry/consul/scheme", "registry.consul.scheme"),
    "tls-without-ca": ({"registry": {"consul": {"scheme": "https", "tls": {"cert": "/c.pem", "key": "/k.pem"}}}}, "/config/registry/consul/tls", "registry.consul.tls"),
    "datacenter": ({"registry": {"consul": {"datacenter": "dc 1"}}}, "/config/registry/consul/datacenter", "registry.consul.datacenter"),
    "service-slash": ({"services": {"users": {"resolver": {"consul": {"service": "shop/users"}}}}}, "/config/services/users/resolver/consul/service", "services.users.resolver.consul.service"),
    "empty-tag": ({"services": {"users": {"resolver": {"consul": {"tag": ""}}}}}, "/config/services/users/resolver/consul/tag", "services.users.resolver.consul.tag"),
    "on-demand-service": ({"discovery": {"on_demand": [{"suffix": ".consul.local", "resolver": {"consul": {"service": "x"}}}]}}, "/config/discovery/on_demand/0/resolver/consul", "discovery.on_demand.0.resolver.consul"),
}


#: Registry settings waypost refuses, etcd's and Consul's, each with where the schema refuses it.
REGISTRY_REFUSED = {**{f"etcd-{k}": v for k, v in ETCD_REFUSED.items()},
                    **{f"consul-{k}": v for k, v in CONSUL_REFUSED.items()}}


@pytest.mark.parametrize("case", REGISTRY_REFUSED)
def test_schema_rejects_registry_settings_waypost_refuses_too(chart, case, waypost_bin, tmp_path):
    config, where, key = REGISTRY_REFUSED[case]
    refused_by_schema_and_waypost(chart, {"config": config}, f"at '{where}'", key, waypost_bin, tmp_path)


@pytest.mark.parametrize("config", [
    {"registry": {"etcd": {"endpoints": ["10.0.0.1:2379", "http://etcd:2379"], "lease_ttl": "30s"}}},
    {"services": {"users": {"resolver": {"etcd": {}}}}},
    {"services": {"users": {"resolver": {"etcd": {"layout": "kitex", "prefix": "", "name": "Users"}}}}},
    {"discovery": {"on_demand": [{"suffix": ".etcd.local", "resolver": {"etcd": {"layout": "grpc"}}}]}},
    {"registry": {"consul": {"address": "${HOST_IP}:8500", "token": "${CONSUL_HTTP_TOKEN:-}", "wait": "1m"}}},
    {"services": {"users": {"resolver": {"consul": {}}}}},
    {"services": {"users": {"resolver": {"consul": {"service": "Users.Service", "tag": "zone:a", "passing_only": False}}}}},
    {"discovery": {"on_demand": [{"suffix": ".consul.local", "resolver": {"consul": {"tag": "v2"}}}]}},
    {"register": [{"service": "shop", "address": "${POD_IP}:8080", "registry": "consul",
                   "check": {"http": "http://127.0.0.1:8080/healthz", "consul": "http"}}]},
], ids=["etcd-registry", "etcd-resolver-defaults", "etcd-resolver-kitex-empty-prefix", "etcd-on-demand",
        "consul-registry", "consul-resolver-defaults", "consul-resolver-every-key", "consul-on-demand",
        "consul-register-http-check"])
def test_schema_accepts_registry_settings(chart, config, waypost_bin, tmp_path):
    chart.render({"config": config}, name=RELEASE, namespace=NAMESPACE)
    result = waypost_check(waypost_bin, yaml.safe_dump(config), {"HOST_IP": "10.0.0.1", "POD_IP": "10.1.2.3"}, tmp_path)
    assert result.returncode == 0, result.stderr


#: A service's `tls:` settings waypost refuses, each with where the schema refuses it and the key
#: waypost names.
UPSTREAM_TLS_REFUSED = {
    "cert-without-key": ({"cert": "/c.pem"}, "services.users.tls.cert"),
    "key-without-cert": ({"key": "/k.pem"}, "services.users.tls.key"),
    "skip-verify-with-ca": ({"ca": "/ca.pem", "insecure_skip_verify": True}, "services.users.tls.insecure_skip_verify"),
}


def tls_service_config(tls: dict) -> dict:
    return {"services": {"users": {"resolver": {"static": {"instances": [{"address": "10.0.0.10:8443"}]}}, "tls": tls}}}


@pytest.mark.parametrize("case", UPSTREAM_TLS_REFUSED)
def test_schema_rejects_upstream_tls_settings_waypost_refuses_too(chart, case, waypost_bin, tmp_path):
    tls, key = UPSTREAM_TLS_REFUSED[case]
    refused_by_schema_and_waypost(chart, {"config": tls_service_config(tls)}, "at '/config/services/users/tls'", key,
                                  waypost_bin, tmp_path)


@pytest.mark.parametrize("tls", [{}, {"insecure_skip_verify": False, "ca": "/ca.pem"}, {"insecure_skip_verify": True}],
                         ids=["empty", "verify-with-ca", "skip-verify"])
def test_schema_accepts_upstream_tls_settings(chart, tls, waypost_bin, tmp_path):
    config = tls_service_config(tls)
    chart.render({"config": config}, name=RELEASE, namespace=NAMESPACE)
    result = waypost_check(waypost_bin, yaml.safe_dump(config), {}, tmp_path)
    assert result.returncode == 0, result.stderr


#: Path-prefix routes waypost refuses, each with where the schema refuses it and the key waypost
#: names.
ROUTES_REFUSED = {
    "relative-prefix": ({"routes": [{"prefix": "api/", "service": "users"}]}, "/config/routes/0/prefix", "routes.0.prefix"),
    "space-in-prefix": ({"routes": [{"prefix": "/a b", "service": "users"}]}, "/config/routes/0/prefix", "routes.0.prefix"),
    "no-service": ({"routes": [{"prefix": "/api/"}]}, "/config/routes/0", "routes[0]: missing field `service`"),
}


@pytest.mark.parametrize("case", ROUTES_REFUSED)
def test_schema_rejects_routes_waypost_refuses_too(chart, case, waypost_bin, tmp_path):
    routes, where, key = ROUTES_REFUSED[case]
    config = routes | {"services": {"users": {"resolver": {"file": {}}}}}
    refused_by_schema_and_waypost(chart, {"config": config}, f"at '{where}'", key, waypost_bin, tmp_path)


#: ZooKeeper settings waypost refuses, each with where the schema refuses it and the key waypost names.
ZOOKEEPER_REFUSED = {
    "no-servers": ({"registry": {"zookeeper": {"servers": []}}}, "/config/registry/zookeeper/servers", "registry.zookeeper.servers"),
    "server-without-port": ({"registry": {"zookeeper": {"servers": ["zk-0.zk"]}}}, "/config/registry/zookeeper/servers/0", "registry.zookeeper.servers.0"),
    "server-with-chroot": ({"registry": {"zookeeper": {"servers": ["zk:2181/app"]}}}, "/config/registry/zookeeper/servers/0", "registry.zookeeper.servers.0"),
    "root-relative": ({"registry": {"zookeeper": {"root": "services"}}}, "/config/registry/zookeeper/root", "registry.zookeeper.root"),
    "root-trailing-slash": ({"registry": {"zookeeper": {"root": "/services/"}}}, "/config/registry/zookeeper/root", "registry.zookeeper.root"),
    "root-system": ({"registry": {"zookeeper": {"root": "/zookeeper"}}}, "/config/registry/zookeeper/root", "registry.zookeeper.root"),
    "user-with-colon": ({"registry": {"zookeeper": {"username": "a:b", "password": "x"}}}, "/config/registry/zookeeper/username", "registry.zookeeper.username"),
    "user-without-password": ({"registry": {"zookeeper": {"username": "a"}}}, "/config/registry/zookeeper", "registry.zookeeper.username"),
    "name-slash": ({"services": {"users": {"resolver": {"zookeeper": {"name": "shop/users"}}}}}, "/config/services/users/resolver/zookeeper/name", "services.users.resolver.zookeeper.name"),
    "name-dots": ({"services": {"users": {"resolver": {"zookeeper": {"name": ".."}}}}}, "/config/services/users/resolver/zookeeper/name", "services.users.resolver.zookeeper.name"),
    "on-demand-name": ({"discovery": {"on_demand": [{"suffix": ".zk.local", "resolver": {"zookeeper": {"name": "x"}}}]}}, "/config/discovery/on_demand/0/resolver/zookeeper", "discovery.on_demand.0.resolver.zookeeper"),
}


@pytest.mark.parametrize("case", ZOOKEEPER_REFUSED)
def test_schema_rejects_zookeeper_settings_waypost_refuses_too(chart, case, waypost_bin, tmp_path):
    config, where, key = ZOOKEEPER_REFUSED[case]
    refused_by_schema_and_waypost(chart, {"config": config}, f"at '{where}'", key, waypost_bin, tmp_path)


@pytest.mark.parametrize("config", [
    {"registry": {"zookeeper": {"servers": ["10.0.0.1:2181", "[fd00::1]:2181"], "session_timeout": "30s", "root": "/"}}},
    {"services": {"users": {"resolver": {"zookeeper": {}}}}},
    {"services": {"users": {"resolver": {"zookeeper": {"name": "Users.Service"}}}}},
    {"discovery": {"on_demand": [{"suffix": ".zk.local", "resolver": {"zookeeper": {}}}]}},
    {"register": [{"service": "shop", "address": "10.0.0.7:8080", "registry": "zookeeper", "check": "none"}]},
], ids=["registry", "resolver-defaults", "resolver-named", "on-demand", "register"])
def test_schema_accepts_zookeeper_settings(chart, config, waypost_bin, tmp_path):
    chart.render({"config": config}, name=RELEASE, namespace=NAMESPACE)
    result = waypost_check(waypost_bin, yaml.safe_dump(config), {}, tmp_path)
    assert result.returncode == 0, result.stderr


#: Paths under `config` that tests/helm/values/every-key.yaml does not set, with the reason. Keys
#: that exclude each other within one object (a service's `static`/`file`/`dns` resolver, `dns`
#: `name`+`port` vs `srv`, an on-demand rule's `dns` vs `file`) are not excluded: every-key.yaml
#: sets each in a different service or rule.
EVERY_KEY_EXCLUDED = {
    "raw": "a whole config used verbatim instead of every other key (the raw-config value set covers it)",
}


def schema_leaf_paths(schema: dict, node: dict, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths to the leaves of `node`: an object's properties by name, a map's values as `*`, an
    array's items as `[]`. A node with none of these (a scalar, `file: {}`) is a leaf."""
    while "$ref" in node:
        node = functools.reduce(lambda n, part: n[part], node["$ref"].removeprefix("#/").split("/"), schema)
    # Combinators would hide paths from this walk (extend it before the schema uses one that
    # declares properties); those that only say which properties must or must not be present
    # together (a dns resolver's `port` vs `srv`) hide none.
    unsupported = {k for k in {"allOf", "not", "if", "patternProperties", "dependencies"} & node.keys()
                   if not presence_only(node[k])}
    assert not unsupported, f"{'.'.join(path)}: schema_leaf_paths does not follow {sorted(unsupported)}"
    found = []
    # Alternatives (`check: none` or a probe): the leaves of each, at this path.
    for key in ("oneOf", "anyOf"):
        for branch in node.get(key) or []:
            if not presence_only(branch):
                found += schema_leaf_paths(schema, branch, path)
    for key, child in (node.get("properties") or {}).items():
        found += schema_leaf_paths(schema, child, path + (key,))
    if isinstance(node.get("additionalProperties"), dict):
        found += schema_leaf_paths(schema, node["additionalProperties"], path + ("*",))
    if isinstance(node.get("items"), dict):
        found += schema_leaf_paths(schema, node["items"], path + ("[]",))
    return found or [path]


def presence_only(sub) -> bool:
    """Whether a combinator's subschema(s) only require or forbid properties, or constrain a
    scalar's value (a root outside `/zookeeper`, `insecure_skip_verify: true` beside a `ca`),
    declaring none."""
    if isinstance(sub, list):
        return all(presence_only(s) for s in sub)
    values = {"required", "pattern", "enum", "const"}
    if isinstance(sub, dict) and "properties" in sub:
        sub = {k: v for k, v in sub.items() if k != "properties"} | {
            "allOf": [*sub.get("allOf", []), *sub["properties"].values()]}
    return isinstance(sub, dict) and set(sub) <= values | {"not", "anyOf", "oneOf", "allOf"} and all(
        presence_only(v) for k, v in sub.items() if k not in values)


def dotted(path: tuple[str, ...]) -> str:
    """("discovery", "on_demand", "[]", "suffix") -> "discovery.on_demand[].suffix"."""
    return ".".join(path).replace(".[]", "[]")


def sets_path(value, path: tuple[str, ...]) -> bool:
    """Whether `value` sets `path` (`*`: in some map entry, `[]`: in some array item)."""
    if not path:
        return True
    head, rest = path[0], path[1:]
    if head == "*":
        return isinstance(value, dict) and any(sets_path(v, rest) for v in value.values())
    if head == "[]":
        return isinstance(value, list) and any(sets_path(v, rest) for v in value)
    return isinstance(value, dict) and head in value and sets_path(value[head], rest)


def test_every_key_values_set_every_config_key():
    """every-key.yaml sets every key the schema allows under `config`, so that
    `test_rendered_config_passes_waypost_check[every-key]` proves waypost accepts them all."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    paths = {dotted(p): p for p in schema_leaf_paths(schema, schema["properties"]["config"])}
    # The walk reaches through $refs, maps and arrays.
    assert {"services.*.resolver.static.instances[].tags.*", "discovery.on_demand[].resolver.dns.port"} <= set(paths)
    stale = set(EVERY_KEY_EXCLUDED) - set(paths)
    assert not stale, f"EVERY_KEY_EXCLUDED names paths the schema no longer has: {sorted(stale)}"
    config = load_values("every-key")["config"]
    missing = [name for name, p in paths.items() if name not in EVERY_KEY_EXCLUDED and not sets_path(config, p)]
    assert not missing, f"tests/helm/values/every-key.yaml does not set: {missing}"
    excluded_but_set = [name for name in EVERY_KEY_EXCLUDED if sets_path(config, paths[name])]
    assert not excluded_but_set, f"every-key.yaml sets excluded paths: {excluded_but_set}"


def test_schema_accepts_env_references(chart):
    chart.render({"config": {"listen": "${LISTEN:-127.0.0.1:4140}", "shutdown": {"grace": "${GRACE}"}}},
                 name=RELEASE, namespace=NAMESPACE)


def test_image_tag_follows_app_version(chart):
    assert chart.values["waypost"]["image"]["tag"] == chart.metadata["appVersion"]


def test_dockerfile_matches_the_chart():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["/usr/local/bin/waypost"]' in dockerfile
    assert 'CMD ["run", "--config", "/etc/waypost/config.yaml"]' in dockerfile
    assert re.search(r"^USER nonroot", dockerfile, re.M)
    wp, _ = waypost_container(pod_spec(manifests("defaults")))
    assert wp["args"] == ["run", "--config", "/etc/waypost/config.yaml"]
    assert wp["securityContext"]["runAsUser"] == 65532, "distroless nonroot, numeric so runAsNonRoot can be verified"


# --- NOTES.txt -------------------------------------------------------------------------------------


def test_notes_tell_how_to_reach_waypost():
    notes = rendered("classic")["waypost/templates/NOTES.txt"]
    assert "http://127.0.0.1:4140" in notes and "Host:" in notes
    assert "HTTP_PROXY=http://127.0.0.1:4140 is set" in notes
    assert "WAYPOST_ECHO_URL = http://127.0.0.1:18081" in notes
    assert "port-forward deploy/demo-waypost 4191" in notes
    assert "WARNING" not in notes


def test_notes_warn_about_an_unwritable_registry_dir(chart):
    notes = chart.render({"config": {"raw": "admin: {listen: 0.0.0.0:4191}\n"}}, name=RELEASE, namespace=NAMESPACE)[
        "waypost/templates/NOTES.txt"]
    assert "WARNING: registry.file.dir is /tmp/waypost/registry" in notes


# --- the sidecar in another chart's pods -----------------------------------------------------------

PARENT_DEPLOYMENT = """\
{{- $wp := dict "Values" .Values.waypost "Release" .Release "Chart" .Chart "Capabilities" .Capabilities }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-shop
spec:
  selector:
    matchLabels: {app: shop}
  template:
    metadata:
      labels: {app: shop}
      annotations:
        {{- include "waypost.podAnnotations" $wp | trim | nindent 8 }}
    spec:
      {{- if .Values.waypost.sidecar.native }}
      initContainers:
        {{- include "waypost.sidecar" $wp | trim | nindent 8 }}
      {{- end }}
      containers:
        - name: shop
          image: example/shop:1.0
          env:
            {{- include "waypost.appEnv" $wp | trim | nindent 12 }}
        {{- if not .Values.waypost.sidecar.native }}
        {{- include "waypost.sidecar" $wp | trim | nindent 8 }}
        {{- end }}
      volumes:
        {{- include "waypost.sidecarVolumes" $wp | trim | nindent 8 }}
"""


@pytest.mark.parametrize("native", [True, False], ids=["native", "classic"])
def test_sidecar_included_by_another_chart(tmp_path, native):
    """The README recipe: waypost as a dependency, its named templates in the parent's pod."""
    parent = tmp_path / "shop"
    (parent / "templates").mkdir(parents=True)
    shutil.copytree(CHART, parent / "charts" / "waypost")
    (parent / "Chart.yaml").write_text(
        "apiVersion: v2\nname: shop\nversion: 1.0.0\nappVersion: '1.0'\n"
        "dependencies:\n  - name: waypost\n    version: 0.1.0\n")
    (parent / "values.yaml").write_text(yaml.safe_dump({"waypost": {
        **load_values("library"),
        "sidecar": {"native": native},
        "config": {"services": {"echo": {"listen": "127.0.0.1:18081",
                                         "resolver": {"static": {"instances": [{"address": "10.0.0.10:8080"}]}}}}},
    }}))
    (parent / "templates" / "deployment.yaml").write_text(PARENT_DEPLOYMENT)
    with helm.Chart.load(parent) as c:
        out = c.render({}, name="prod", namespace=NAMESPACE)
    docs = [d for p, t in out.items() if not p.endswith("NOTES.txt") for d in yaml.safe_load_all(t) if d]
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment"], "library mode renders only the ConfigMap"
    for doc in docs:
        for kube in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, kube, strict=True)
    spec = pod_spec(docs)
    wp, is_native = waypost_container(spec)
    assert is_native == native
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["waypost-config"]["configMap"]["name"] == "shop-waypost-config"
    assert find(docs, "ConfigMap", "shop-waypost-config")
    assert env_map(spec["containers"][0]) == {"WAYPOST_URL": "http://127.0.0.1:4140",
                                              "WAYPOST_ECHO_URL": "http://127.0.0.1:18081"}
    check_pod(docs)


# --- the config inside the ConfigMap passes `waypost check` -----------------------------------------


@pytest.fixture(scope="session")
def waypost_bin() -> Path:
    path = Path(os.environ.get("WAYPOST_BIN", ROOT / "target" / "debug" / "waypost"))
    if not path.is_file():
        pytest.fail(f"{path} not found: build it with `cargo build --bin waypost` "
                    "(tests/helm/run.sh does), or point WAYPOST_BIN at a waypost binary")
    return path


def pod_env(container: dict) -> dict[str, str]:
    """The environment the kubelet would give `container` (downward API values faked)."""
    env = {}
    for e in container.get("env") or []:
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "fieldRef" in e.get("valueFrom", {}):
            env[e["name"]] = DOWNWARD[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def waypost_check(waypost_bin: Path, config_text: str, env: dict[str, str], tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text(config_text)
    # Only the pod's environment: nothing from the machine running the tests leaks into ${VAR}s.
    return subprocess.run([str(waypost_bin), "check", "--config", str(path)], capture_output=True, text=True,
                          timeout=30, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env})


@pytest.mark.parametrize("name", [n for n in VALUE_SETS if n != "library"])
def test_rendered_config_passes_waypost_check(name, waypost_bin, tmp_path):
    docs = manifests(name)
    spec = pod_spec(docs)
    wp, _ = waypost_container(spec)
    cm = {v["name"]: v for v in spec["volumes"]}["waypost-config"]["configMap"]["name"]
    text = find(docs, "ConfigMap", cm)["data"]["config.yaml"]
    result = waypost_check(waypost_bin, text, pod_env(wp), tmp_path)
    assert result.returncode == 0, f"waypost check failed ({result.returncode}):\n{result.stderr}\n--- config:\n{text}"


def test_library_config_passes_waypost_check(waypost_bin, tmp_path):
    text = find(manifests("library"), "ConfigMap", "shop-waypost-config")["data"]["config.yaml"]
    result = waypost_check(waypost_bin, text, {"POD_NAMESPACE": NAMESPACE}, tmp_path)
    assert result.returncode == 0, result.stderr


def test_broken_config_fails_waypost_check(waypost_bin, tmp_path):
    docs = manifests_for(load_values("broken-config"))
    wp, _ = waypost_container(pod_spec(docs))
    result = waypost_check(waypost_bin, find(docs, "ConfigMap")["data"]["config.yaml"], pod_env(wp), tmp_path)
    assert result.returncode == 2, f"expected exit 2, got {result.returncode}: {result.stderr}"
    # file:line:col: key: reason
    assert re.search(r"config\.yaml:\d+:\d+: services\.echo\.listen: ", result.stderr), result.stderr


def manifests_for(values: dict) -> list[dict]:
    with helm.Chart.load(CHART) as c:
        out = c.render(values, name=RELEASE, namespace=NAMESPACE)
    return [d for p, t in sorted(out.items()) if not p.endswith("NOTES.txt") for d in yaml.safe_load_all(t) if d]
