"""The Helm chart: lint, golden `helm template` output, schema errors, generated parts in sync, hardening, RBAC."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "elastiserve"
GOLDEN = ROOT / "tests" / "golden"
CRD_SOURCE = ROOT / "crds" / "modeldeployments.elastiserve.dev.yaml"
VALUE_SETS = ("default", "namespaced", "monitoring")


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [o for o in by_kind(objs, kind) if o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def rules_table(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """RBAC rules → {(apiGroup, resource): verbs}."""
    table: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                table.setdefault((group, resource), set()).update(rule["verbs"])
    return table


WATCH = {"get", "list", "watch"}
OWNED = WATCH | {"create", "patch", "delete"}
OPERATOR_NAMESPACED = {
    ("elastiserve.dev", "modeldeployments"): WATCH | {"patch", "update"},
    ("elastiserve.dev", "modeldeployments/status"): {"get", "patch", "update"},
    ("apps", "deployments"): OWNED,
    ("", "services"): OWNED,
    ("", "configmaps"): OWNED,
    ("autoscaling", "horizontalpodautoscalers"): OWNED,
    ("discovery.k8s.io", "endpointslices"): OWNED,
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
OPERATOR_CLUSTER = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    ("", "namespaces"): {"list", "watch"},
}
ACTIVATOR = {
    ("elastiserve.dev", "modeldeployments"): {"get", "patch"},
    ("discovery.k8s.io", "endpointslices"): WATCH,
    ("", "pods"): WATCH,
}


@pytest.fixture(scope="module")
def rendered(helm) -> dict[str, list[dict[str, Any]]]:
    return {name: docs(helm.template([GOLDEN / f"values-{name}.yaml"]).stdout) for name in VALUE_SETS}


# --------------------------------------------------------------------------- lint and golden output


def test_helm_lint_strict(helm):
    proc = helm.run("lint", str(CHART), "--strict", "--kube-version", "1.34.0", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for values in VALUE_SETS:
        proc = helm.run("lint", str(CHART), "--strict", "--kube-version", "1.34.0", "-f", str(GOLDEN / f"values-{values}.yaml"), check=False)
        assert proc.returncode == 0, f"values-{values}.yaml: {proc.stdout}{proc.stderr}"


GENERATED_BODIES = {
    # template → (line that starts the generated body, what checks that body instead)
    "templates/crds/modeldeployments.elastiserve.dev.yaml": ("spec:", "test_chart_crd_equals_crds_folder"),
    "templates/grafana/": ("data:", "test_dashboard_configmaps_carry_the_generated_json"),
}


def without_generated_bodies(text: str) -> str:
    """The rendered chart with the CRD schema and the dashboards' JSON cut out.

    Those bodies come from crds/ and dashboards/ and have their own sync tests; keeping them in the
    golden files would make every API or dashboard change rewrite thousands of golden lines.
    """
    out = []
    for doc in re.split(r"(?m)^---\n", text):
        source = re.search(r"(?m)^# Source: [^/]+/(\S+)", doc)
        for prefix, (start, checker) in GENERATED_BODIES.items():
            if source and source.group(1).startswith(prefix):
                head, sep, _ = doc.partition(f"\n{start}\n")
                if sep:
                    doc = f"{head}\n{start} {{}}  # generated; checked by {checker}\n"
        out.append(doc)
    return "---\n".join(out)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_template_matches_golden(helm, golden, name):
    golden(f"helm-{name}.yaml", without_generated_bodies(helm.template([GOLDEN / f"values-{name}.yaml"]).stdout))


def test_every_object_has_the_standard_labels(rendered):
    for name, objs in rendered.items():
        for obj in objs:
            labels = obj["metadata"].get("labels", {})
            where = f"values-{name}: {obj['kind']} {obj['metadata']['name']}"
            for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                        "app.kubernetes.io/managed-by", "helm.sh/chart"):
                assert key in labels, f"{where} lacks label {key}"


# --------------------------------------------------------------------------- values validation

SCHEMA_CASES = [
    ("operator.replicas=-1", "/operator/replicas"),
    ("operater.replicas=1", "additional properties 'operater' not allowed"),
    ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ("operator.prometheusUrl=prometheus:9090", "/operator/prometheusUrl"),
    ("watchNamespaces[0]=Team_A", "/watchNamespaces/0"),
    ("monitoring.interval=soon", "/monitoring/interval"),
    ("activator.queueSize=0", "/activator/queueSize"),
    ("operator.metricsPort=70000", "/operator/metricsPort"),
    ("tracing.samplingRatio=2", "/tracing/samplingRatio"),
    ("tracing.endpoint=jaeger:4318", "/tracing/endpoint"),
]


@pytest.mark.parametrize("value,message", SCHEMA_CASES, ids=[c[0].split("=")[0] for c in SCHEMA_CASES])
def test_schema_rejects_bad_values_with_a_message(helm, value, message):
    proc = helm.template(sets=[value], check=False)
    assert proc.returncode != 0, f"--set {value} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "sets,message",
    [
        (["rbac.namespaced=true"], "rbac.namespaced=true needs watchNamespaces"),
        (["operator.replicas=2"], "operator.replicas=2 needs operator.peering.enabled=true"),
        (["tracing.enabled=true"], "tracing.enabled=true needs tracing.endpoint"),
    ],
    ids=["namespaced-without-namespaces", "ha-without-peering", "tracing-without-endpoint"],
)
def test_cross_field_rules_fail_with_a_fix(helm, sets, message):
    proc = helm.template(sets=sets, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- generated parts


def test_chart_crd_equals_crds_folder(helm):
    out = helm.template(extra=["--show-only", "templates/crds/modeldeployments.elastiserve.dev.yaml"]).stdout
    (crd,) = docs(out)
    expected = yaml.safe_load(CRD_SOURCE.read_text())
    labels = crd["metadata"].pop("labels")
    assert labels["app.kubernetes.io/component"] == "crds"
    assert crd["metadata"]["annotations"].pop("helm.sh/resource-policy") == "keep"
    assert crd == expected, "the chart's CRD differs from crds/: run hack/sync-chart.py"


def test_crd_template_is_in_sync(sync_chart):
    stale = sync_chart.stale(sync_chart.crd_outputs())
    assert not stale, f"run hack/sync-chart.py: stale {[str(p.relative_to(ROOT)) for p in stale]}"


def test_crd_sync_detects_drift(sync_chart, tmp_path):
    """The drift check really compares: an edited template is reported stale."""
    (path, text), = sync_chart.crd_outputs().items()
    edited = tmp_path / "crd.yaml"
    edited.write_text(text.replace("scope: Namespaced", "scope: Cluster"))
    assert sync_chart.stale({edited: text}) == [edited]


@pytest.mark.parametrize(
    "sets,expect_crds,expect_keep",
    [([], 1, True), (["crds.keep=false"], 1, False), (["crds.install=false"], 0, False)],
    ids=["default", "no-keep", "not-installed"],
)
def test_crd_install_and_keep_switches(helm, sets, expect_crds, expect_keep):
    crds = by_kind(docs(helm.template(sets=sets).stdout), "CustomResourceDefinition")
    assert len(crds) == expect_crds
    for crd in crds:
        assert (crd["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep") == expect_keep


def test_peering_ships_kopf_crds_and_the_peering_object(rendered):
    objs = rendered["namespaced"]
    names = {c["metadata"]["name"] for c in by_kind(objs, "CustomResourceDefinition")}
    assert names == {"modeldeployments.elastiserve.dev", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    peering = one(objs, "ClusterKopfPeering")
    assert peering["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    args = one(objs, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--peering={peering['metadata']['name']}" in args


# --------------------------------------------------------------------------- monitoring objects


@pytest.mark.parametrize(
    "sets,api_versions,expected",
    [
        ([], [], set()),
        ([], ["monitoring.coreos.com/v1"], {"ServiceMonitor", "PodMonitor", "PrometheusRule"}),
        (["monitoring.force=true"], [], {"ServiceMonitor", "PodMonitor", "PrometheusRule"}),
        (["monitoring.enabled=false"], ["monitoring.coreos.com/v1"], set()),
        (["monitoring.prometheusRule.enabled=false"], ["monitoring.coreos.com/v1"], {"ServiceMonitor", "PodMonitor"}),
    ],
    ids=["no-api", "api-advertised", "forced", "disabled", "no-rules"],
)
def test_monitoring_objects_follow_the_cluster_capabilities(helm, sets, api_versions, expected):
    kinds = {o["kind"] for o in docs(helm.template(sets=sets, api_versions=api_versions).stdout)}
    assert kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"} == expected


def test_prometheusrule_carries_the_rules_file(rendered):
    rule = one(rendered["monitoring"], "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "rules.yaml").read_text())
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_servicemonitors_honor_the_model_namespace_label(rendered):
    for sm in by_kind(rendered["monitoring"], "ServiceMonitor"):
        assert all(ep["honorLabels"] for ep in sm["spec"]["endpoints"]), sm["metadata"]["name"]
    pm = one(rendered["monitoring"], "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "elastiserve",
        "app.kubernetes.io/component": "model-server",
    }


# --------------------------------------------------------------------------- Grafana dashboards


def test_dashboard_configmaps_carry_the_generated_json(rendered):
    cms = [c for c in by_kind(rendered["default"], "ConfigMap") if "-dashboard-" in c["metadata"]["name"]]
    assert len(cms) == 3
    for cm in cms:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((filename, text),) = cm["data"].items()
        generated = ROOT / "dashboards" / "generated" / filename
        assert json.loads(text) == json.loads(generated.read_text()), f"{filename}: run hack/sync-chart.py"
        assert "{{variant}}" in text or "{{" in text or filename == "elastiserve-operator.json"


def test_dashboards_go_to_the_configured_namespace(rendered):
    cms = [c for c in by_kind(rendered["monitoring"], "ConfigMap") if "-dashboard-" in c["metadata"]["name"]]
    assert {c["metadata"]["namespace"] for c in cms} == {"monitoring"}
    assert {c["metadata"]["annotations"]["grafana_folder"] for c in cms} == {"Model serving"}


# --------------------------------------------------------------------------- hardening


@pytest.mark.parametrize("name", VALUE_SETS)
def test_pods_are_hardened(rendered, name):
    for dep in by_kind(rendered[name], "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= set(c["resources"]["requests"])
            assert c["livenessProbe"] and c["readinessProbe"]
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


def test_operator_probes_hit_the_kopf_liveness_endpoint(helm):
    objs = docs(helm.template(sets=["operator.healthPort=8555"]).stdout)
    container = one(objs, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]
    assert "--liveness=http://0.0.0.0:8555/healthz" in container["args"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["health"] == 8555
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


@pytest.mark.parametrize(
    "sets,expected",
    [
        # zero-scaled models' Services point at the activator (without it a request at zero finds nothing)
        ([], ["run", "--all-namespaces", "--metrics-port=9090", "--liveness=http://0.0.0.0:8081/healthz",
              "--activator-service=elastiserve/elastiserve-activator", "--activator-settle-seconds=10"]),
        (
            ["watchNamespaces={a,b}", "operator.prometheusUrl=http://prom:9090", "operator.verbose=true"],
            ["run", "--namespace=a", "--namespace=b", "--metrics-port=9090", "--liveness=http://0.0.0.0:8081/healthz",
             "--prometheus-url=http://prom:9090", "--activator-service=elastiserve/elastiserve-activator",
             "--activator-settle-seconds=10", "--verbose"],
        ),
        (["activator.enabled=false"],
         ["run", "--all-namespaces", "--metrics-port=9090", "--liveness=http://0.0.0.0:8081/healthz"]),
    ],
    ids=["cluster-wide", "namespaces", "no-activator"],
)
def test_operator_command_line(helm, sets, expected):
    container = one(docs(helm.template(sets=sets).stdout), "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == expected


def test_activator_command_line(rendered):
    container = one(rendered["default"], "Deployment", "-activator")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["activator", "--kubernetes", "--port=8080", "--queue-size=1000", "--timeout=90",
                                 "--max-held-bytes=256Mi", "--drain-seconds=5", "--all-namespaces"]


def test_the_activator_pods_grace_covers_its_drain_and_its_longest_hold(helm):
    """SIGTERM -> the drain -> the held requests each answered within --timeout: the kubelet must not kill
    the pod before (serving/activator.py, "Shutdown"); readiness, not liveness, reports the drain."""
    out = docs(helm.template(sets=["activator.timeoutSeconds=30"], extra=["--set-json", "activator.drainSeconds=2.5"]).stdout)
    pod = one(out, "Deployment", "-activator")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 3 + 30 + 5
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--drain-seconds=2.5" in container["args"]


def test_tracing_settings_reach_the_operator_and_the_activator(helm):
    out = docs(helm.template(sets=["tracing.enabled=true", "tracing.endpoint=http://jaeger.tracing:4318",
                                   "tracing.samplingRatio=0.05", "operator.extraEnv[0].name=EXTRA",
                                   "operator.extraEnv[0].value=abc"]).stdout)
    want = [{"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://jaeger.tracing:4318"},
            {"name": "OTEL_TRACES_SAMPLER", "value": "parentbased_traceidratio"},
            {"name": "OTEL_TRACES_SAMPLER_ARG", "value": "0.05"}]
    operator = one(out, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]
    activator = one(out, "Deployment", "-activator")["spec"]["template"]["spec"]["containers"][0]
    assert operator["env"] == want + [{"name": "EXTRA", "value": "abc"}]
    assert activator["env"] == want


def test_tracing_is_off_by_default(rendered):
    for suffix in ("-operator", "-activator"):
        container = one(rendered["default"], "Deployment", suffix)["spec"]["template"]["spec"]["containers"][0]
        assert not any(e["name"].startswith("OTEL_") for e in container.get("env") or [])


# --------------------------------------------------------------------------- RBAC


def test_cluster_wide_operator_rbac_is_exactly_what_it_uses(rendered):
    role = one(rendered["default"], "ClusterRole", "-operator")
    assert rules_table(role["rules"]) == {**OPERATOR_CLUSTER, **OPERATOR_NAMESPACED}


def test_no_secret_reads_by_default(rendered):
    for role in by_kind(rendered["default"], "ClusterRole") + by_kind(rendered["default"], "Role"):
        assert not [r for r in role["rules"] if "secrets" in r["resources"]], role["metadata"]["name"]


def test_secret_reads_only_where_listed_and_by_name(rendered):
    objs = rendered["namespaced"]
    roles = [r for r in by_kind(objs, "Role") if r["metadata"]["name"].endswith("-token-secrets")]
    assert [r["metadata"]["namespace"] for r in roles] == ["team-a"]
    assert roles[0]["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                                  "resourceNames": ["prometheus-token"]}]
    binding = [b for b in by_kind(objs, "RoleBinding") if b["metadata"]["name"].endswith("-token-secrets")]
    assert [b["metadata"]["namespace"] for b in binding] == ["team-a"]
    for role in by_kind(objs, "ClusterRole") + by_kind(objs, "Role"):
        if role not in roles:
            assert not [r for r in role["rules"] if "secrets" in r["resources"]], role["metadata"]["name"]


def test_metrics_tenancy_flags(rendered):
    op = one(rendered["namespaced"], "Deployment", "-operator")
    args = op["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--prometheus-allowed-url=team-b=http://prometheus.team-b:9090" in args
    assert "--custom-queries-namespace=team-a" in args


def test_namespaced_operator_rbac(rendered):
    objs = rendered["namespaced"]
    cluster = one(objs, "ClusterRole", "-operator-discovery")
    assert rules_table(cluster["rules"]) == {
        **OPERATOR_CLUSTER,
        ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"},
    }
    roles = [r for r in by_kind(objs, "Role") if r["metadata"]["name"].endswith("-operator")]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    expected = dict(OPERATOR_NAMESPACED)
    expected[("kopf.dev", "kopfpeerings")] = {"get", "list", "watch", "patch"}
    for role in roles:
        assert rules_table(role["rules"]) == expected
    bindings = [b for b in by_kind(objs, "RoleBinding") if b["metadata"]["name"].endswith("-operator")]
    assert all(b["subjects"][0]["namespace"] == "elastiserve" for b in bindings)
    assert not [r for r in by_kind(objs, "ClusterRole") if r["metadata"]["name"].endswith("-operator")]


@pytest.mark.parametrize("name", ["default", "namespaced"])
def test_activator_rbac(rendered, name):
    objs = rendered[name]
    kind = "Role" if name == "namespaced" else "ClusterRole"
    roles = [r for r in by_kind(objs, kind) if r["metadata"]["name"].endswith("-activator")]
    assert roles
    for role in roles:
        assert rules_table(role["rules"]) == ACTIVATOR


def test_no_wildcards_anywhere(rendered):
    for objs in rendered.values():
        for role in by_kind(objs, "ClusterRole") + by_kind(objs, "Role"):
            for rule in role["rules"]:
                assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], role["metadata"]["name"]


# --------------------------------------------------------------------------- README


def test_every_value_has_a_doc_comment(chart_readme):
    missing = chart_readme.undocumented((CHART / "values.yaml").read_text())
    assert not missing, "values without a `# --` comment: " + ", ".join(f"{d.path} (line {d.line})" for d in missing)


def test_chart_readme_is_generated_from_values(chart_readme):
    assert (CHART / "README.md").read_text() == chart_readme.readme(), "run hack/chart-readme.py"


def test_readme_table_lists_every_leaf_value(chart_readme):
    table = chart_readme.values_table((CHART / "values.yaml").read_text())
    for key in ("operator.replicas", "crds.install", "crds.keep", "rbac.namespaced", "monitoring.force",
                "grafana.dashboards.label", "operator.securityContext.capabilities.drop"):
        assert f"| {key} |" in table


def test_readme_parser_continuation_and_default_override(chart_readme):
    text = "# -- first line\n# second line\n# @default -- computed\na: 1\nb:\n  # -- nested\n  c: x\nd: 2\n"
    docs_ = {d.path: d for d in chart_readme.parse_comments(text)}
    assert docs_["a"].description == "first line second line" and docs_["a"].default_override == "computed"
    assert docs_["b"].description is None and docs_["b.c"].description == "nested"
    assert [d.path for d in chart_readme.undocumented(text)] == ["b", "d"]


def test_chart_crd_uses_keywords_the_api_server_accepts(helm):
    """apiextensions/v1 schemas are OpenAPI v3.0: exclusiveMinimum/Maximum are booleans next to minimum/maximum.

    A JSON-Schema-2020 number there (pydantic's ``gt=0``) makes the API server reject the whole CRD
    ("cannot unmarshal number into ... of type bool"), so `helm install` fails.
    """
    out = helm.template(extra=["--show-only", "templates/crds/modeldeployments.elastiserve.dev.yaml"]).stdout
    (crd,) = docs(out)
    bad = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key in ("exclusiveMinimum", "exclusiveMaximum", "uniqueItems", "nullable"):
                if key in node and not isinstance(node[key], bool):
                    bad.append(f"{path}.{key}={node[key]!r}")
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], "openAPIV3Schema")
    assert not bad, "non-boolean keywords (fix api/crd.py, then make crds and hack/sync-chart.py): " + ", ".join(bad)
