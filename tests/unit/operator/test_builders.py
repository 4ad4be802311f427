"""Pure builders of the owned objects, checked against golden YAML (pytest --update-golden rewrites)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from elastiserve.api import SpecError, parse_manifest
from elastiserve.api.spec import Precision
from elastiserve.operator import builders

ROOT = Path(__file__).resolve().parents[3]


def manifest(name: str):
    return parse_manifest(yaml.safe_load((ROOT / "examples" / name).read_text()))


@pytest.mark.parametrize("example", ["minimal.yaml", "full.yaml", "hpa.yaml"])
def test_owned_objects_golden(example, golden):
    md = manifest(example)
    objs = builders.desired_objects(md.spec, md.metadata.name, "demo", "uid-1234")
    golden(f"owned-{example}", yaml.safe_dump_all(objs, sort_keys=True))


def test_every_object_is_owned_and_labelled():
    md = manifest("full.yaml")
    for obj in builders.desired_objects(md.spec, "embeddings", "demo", "uid-1"):
        ref = obj["metadata"]["ownerReferences"][0]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("ModelDeployment", "embeddings", "uid-1", True)
        assert obj["metadata"]["labels"][builders.LABEL_MDEP] == "embeddings"
        assert obj["metadata"]["labels"][builders.LABEL_MANAGED] == "elastiserve"


def test_at_zero_the_public_service_selects_no_pod_but_keeps_a_selector():
    """Removing the selector would leave the controllers' EndpointSlices and Endpoints as they were, naming
    pods that go away (docs/operator.md); a selector no pod matches makes the controllers empty them."""
    md = manifest("full.yaml")
    svc = builders.build_service_to_activator(md.spec, "e", "ns", "u")
    assert svc["spec"]["selector"] == builders.ACTIVATOR_SELECTOR
    pods = [o["spec"]["template"]["metadata"]["labels"] for o in builders.desired_objects(md.spec, "e", "ns", "u")
            if o["kind"] == "Deployment"]
    pods += [builders.build_deployment(md.spec, "e", "ns", "u", v, version="v2", canary=True)
             ["spec"]["template"]["metadata"]["labels"] for v in md.spec.variants]
    assert pods and not any(builders.ACTIVATOR_SELECTOR.items() <= labels.items() for labels in pods)
    assert builders.build_service(md.spec, "e", "ns", "u")["spec"]["selector"].items() <= pods[0].items()


def test_templates_leave_replicas_to_the_scaler():
    md = manifest("full.yaml")
    deployments = [o for o in builders.desired_objects(md.spec, "e", "ns", "u") if o["kind"] == "Deployment"]
    assert [d["metadata"]["name"] for d in deployments] == ["e-fp32", "e-int8"]
    assert all("replicas" not in d["spec"] for d in deployments)
    assert builders.build_replicas("e", "ns", "int8", 3)["spec"] == {"replicas": 3}


def test_int8_variant_runs_the_quantized_artifact_with_its_own_resources():
    md = manifest("full.yaml")
    int8 = builders.build_deployment(md.spec, "e", "ns", "u", md.spec.variants[1])
    container = int8["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ELASTISERVE_MODELS"] == "minilm=file:///models/minilm/model.int8.onnx"
    assert env["ELASTISERVE_VARIANT"] == "int8" and env["ELASTISERVE_MODEL_VARIANT"] == "int8"
    # The server may read only the folders of the declared artifacts.
    assert env["ELASTISERVE_MODEL_STORE"] == "file:///models/minilm,file:///models/legal,s3://models/medical"
    # Sub-models come from a mounted ConfigMap, so editing one never changes the pod template.
    assert env["ELASTISERVE_MODELS_FILE"] == "/etc/elastiserve/submodels/models"
    volume, artifacts = int8["spec"]["template"]["spec"]["volumes"]  # a sub-model lives in s3://: a disk cache
    assert volume["configMap"]["name"] == "e-submodels"
    assert artifacts == {"name": "artifacts", "emptyDir": {"sizeLimit": builders.ARTIFACTS_SIZE_LIMIT}}
    assert container["resources"]["requests"]["cpu"] == "500m"


def test_a_submodel_version_bump_changes_the_configmap_not_the_pods():
    md = manifest("full.yaml")
    spec = md.spec.model_copy(deep=True)
    legal = spec.model.sub_models[0]
    legal.uri, legal.version = "s3://models/legal/$version/model.onnx", "v1"
    before = builders.desired_objects(spec, "e", "ns", "u")
    legal.version = "v2"
    after = builders.desired_objects(spec, "e", "ns", "u")
    deployments = lambda objs: [o for o in objs if o["kind"] == "Deployment"]  # noqa: E731
    assert deployments(before) == deployments(after)
    cm_before, cm_after = before[0], after[0]
    assert cm_before["metadata"]["name"] == "e-submodels"
    assert "legal=s3://models/legal/v1/model.onnx\n" in cm_before["data"]["models"]
    assert "legal=s3://models/legal/v2/model.onnx\n" in cm_after["data"]["models"]
    # A new sub-model name needs new processes: the template changes (and the pods roll).
    spec.model.sub_models.append(legal.model_copy(update={"name": "tax"}))
    added = [o for o in builders.desired_objects(spec, "e", "ns", "u") if o["kind"] == "Deployment"]
    assert added[0]["spec"]["template"] != deployments(after)[0]["spec"]["template"]
    # Every version of the sub-model lives below its store root.
    env = {e["name"]: e.get("value") for e in deployments(after)[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "s3://models/legal" in env["ELASTISERVE_MODEL_STORE"].split(",")


def test_without_submodels_there_is_no_models_file():
    md = manifest("minimal.yaml")
    objs = builders.desired_objects(md.spec, "e", "ns", "u")
    assert [o["kind"] for o in objs if o["kind"] == "ConfigMap"] == []
    container = objs[0]["spec"]["template"]["spec"]["containers"][0]
    assert "ELASTISERVE_MODELS_FILE" not in {e["name"] for e in container["env"]} and "volumeMounts" not in container



def test_pruned_variant_of_a_model_folder_serves_the_pruned_artifact():
    md = manifest("full.yaml")
    spec = md.spec.model_copy(deep=True)
    spec.model.uri = "file:///models/minilm"
    pruned = spec.variants[1].model_copy(update={"name": "pruned", "precision": Precision.pruned})
    container = builders.build_deployment(spec, "e", "ns", "u", pruned)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    # A folder URI: the server picks model.pruned.onnx in it (serving/paths.py VARIANT_FILES).
    assert env["ELASTISERVE_MODELS"] == "minilm=file:///models/minilm"
    assert env["ELASTISERVE_MODEL_VARIANT"] == "pruned"

@pytest.mark.parametrize(
    "budget,request_,want",
    [("512Mi", "1Gi", "1Gi"), ("2Gi", "1Gi", "2304Mi"), ("1Gi", None, "1280Mi")],
    ids=["request-covers-budget", "raised-to-budget", "no-request"],
)
def test_memory_request_follows_the_budget(budget, request_, want):
    spec = {"model": {"name": "m", "uri": "/m.onnx", "lazyLoading": {"memoryBudget": budget}}}
    spec["template"] = {"resources": {"requests": {"cpu": "1", **({"memory": request_} if request_ else {})}}}
    md = parse_manifest({"apiVersion": "elastiserve.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "m"}, "spec": spec})
    dep = builders.build_deployment(md.spec, "m", "ns", "u", md.spec.primary)
    assert dep["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"] == want


def test_hpa_floor_is_clamped_to_bounds():
    md = manifest("hpa.yaml")
    assert builders.build_hpa(md.spec, "m", "ns", "u", 0)["spec"]["minReplicas"] == 1
    assert builders.build_hpa(md.spec, "m", "ns", "u", 50)["spec"]["minReplicas"] == 8
    hpa = builders.build_hpa(md.spec, "m", "ns", "u", 4)
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def test_containers_are_hardened():
    md = manifest("minimal.yaml")
    dep = builders.build_deployment(md.spec, "m", "ns", "u", md.spec.primary)
    pod = dep["spec"]["template"]["spec"]
    sc = pod["containers"][0]["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["runAsNonRoot"] and sc["capabilities"] == {"drop": ["ALL"]}
    assert not sc["allowPrivilegeEscalation"]
    assert pod["automountServiceAccountToken"] is False  # model servers never call the API
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_version_placeholder_and_model_folders():
    spec = {"model": {"name": "m", "uri": "file:///store/$version/m", "version": "v7"},
            "variants": [{"name": "fp32"}, {"name": "int8", "precision": "int8", "role": "burst"}]}
    md = parse_manifest({"apiVersion": "elastiserve.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "m"}, "spec": spec})
    for v in md.spec.variants:
        env = {e["name"]: e.get("value") for e in builders.server_env(md.spec, "m", v)}
        assert env["ELASTISERVE_MODELS"] == "m=file:///store/v7/m"  # a folder: the server picks the variant file
        assert env["ELASTISERVE_MODEL_VERSION"] == "v7"
    canary = builders.build_deployment(md.spec, "m", "ns", "u", md.spec.primary, version="v8", canary=True)
    assert canary["metadata"]["name"] == "m-fp32-canary"
    assert canary["spec"]["selector"]["matchLabels"][builders.LABEL_TRACK] == "canary"
    env = {e["name"]: e.get("value") for e in canary["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ELASTISERVE_MODELS"] == "m=file:///store/v8/m"


def test_the_model_itself_is_loaded_before_a_replica_is_ready():
    """Lazy loading is for sub-models: a new replica (scale-up, canary, wake from zero) preloads the model
    itself whether the spec lists it or not, so it does not meet its first requests with a model load."""
    base = {"model": {"name": "m", "uri": "file:///store/m", "subModels": [{"name": "legal", "uri": "file:///store/legal"}]}}

    def preload(lazy: dict | None) -> str:
        spec = {"model": base["model"] | ({"lazyLoading": lazy} if lazy is not None else {})}
        md = parse_manifest({"apiVersion": "elastiserve.dev/v1alpha1", "kind": "ModelDeployment",
                             "metadata": {"name": "m"}, "spec": spec})
        return {e["name"]: e.get("value") for e in builders.server_env(md.spec, "m", md.spec.primary)}["ELASTISERVE_PRELOAD"]

    assert preload(None) == "m"
    assert preload({"preload": ["legal"]}) == "m,legal"
    assert preload({"preload": ["legal", "m"]}) == "m,legal"
    assert preload({"enabled": False}) == "all"


def _serve_params(env: dict[str, str], monkeypatch) -> dict:
    """The options `elastiserve serve` resolves from a container's environment (parsed, not run)."""
    import typer

    from elastiserve.serving.cli import serve

    app = typer.Typer()
    app.command("serve")(serve)
    for key in [k for k in os.environ if k.startswith("ELASTISERVE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    command = typer.main.get_command(app)  # one command: the command itself, not a group
    with command.make_context("serve", []) as ctx:
        return ctx.params


def test_model_server_listens_where_the_probes_and_the_service_connect(monkeypatch):
    md = parse_manifest({"apiVersion": "elastiserve.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "m"},
                         "spec": {"model": {"name": "m", "uri": "file:///store/m"},
                                  "template": {"ports": [{"name": "web", "containerPort": 9000}]}}})
    dep = builders.build_deployment(md.spec, "m", "ns", "u", md.spec.primary)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    params = _serve_params(env, monkeypatch)
    # A pod's probes and its Service connect to the pod IP: 127.0.0.1 (the serve default) is unreachable.
    assert params["host"] == "0.0.0.0"
    assert params["port"] == 9000 == container["ports"][0]["containerPort"]
    assert container["readinessProbe"]["httpGet"]["port"] == container["ports"][0]["name"] == "web"
    assert builders.build_service(md.spec, "m", "ns", "u")["spec"]["ports"][0]["targetPort"] == "web"
    # Without the pod's environment, a developer's `elastiserve serve` stays on loopback.
    assert _serve_params({}, monkeypatch)["host"] == "127.0.0.1"


def test_the_listen_address_is_the_operators_not_the_templates():
    with pytest.raises(SpecError, match="ELASTISERVE_"):
        parse_manifest({"apiVersion": "elastiserve.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "m"},
                        "spec": {"model": {"name": "m", "uri": "file:///store/m"},
                                 "template": {"env": [{"name": "ELASTISERVE_HOST", "value": "::"}]}}})


def test_pods_inherit_the_operators_tracing_settings_unless_the_spec_sets_its_own():
    md = parse_manifest({"apiVersion": "elastiserve.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "m"},
                         "spec": {"model": {"name": "m", "uri": "file:///store/m"},
                                  "template": {"env": [{"name": "OTEL_TRACES_SAMPLER_ARG", "value": "1"},
                                                       {"name": "OMP_NUM_THREADS", "value": "1"}]}}})
    spec = md.spec
    inherited = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger.tracing:4318"), ("OTEL_TRACES_SAMPLER_ARG", "0.01")]

    def env_of(dep):
        return [(e["name"], e.get("value")) for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]]

    deployments = [builders.build_deployment(spec, "m", "ns", "u", spec.primary, canary=c, inherited_env=inherited)
                   for c in (False, True)]
    deployments += [o for o in builders.desired_objects(spec, "m", "ns", "u", inherited_env=inherited)
                    if o["kind"] == "Deployment"]
    for dep in deployments:
        env = env_of(dep)
        names = [n for n, _ in env]
        assert len(names) == len(set(names)), "server-side apply rejects repeated env names"
        # the spec's own choice of sampling wins; the endpoint is inherited; the operator's variables come last
        assert dict(env)["OTEL_TRACES_SAMPLER_ARG"] == "1"
        assert dict(env)["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger.tracing:4318"
        assert names.index("OTEL_EXPORTER_OTLP_ENDPOINT") < names.index("ELASTISERVE_MODELDEPLOYMENT")
    plain = env_of(builders.build_deployment(spec, "m", "ns", "u", spec.primary))
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in dict(plain)

def test_operator_variables_cannot_be_overridden_by_template_env():
    from elastiserve.api import SpecError, parse_spec

    with pytest.raises(SpecError, match="reserved for the operator"):
        parse_spec({"model": {"name": "m", "uri": "/s/m.onnx"},
                    "template": {"env": [{"name": "ELASTISERVE_MODEL_STORE", "value": "/"}]}})
    # Even a spec built past validation: the operator's value is the one the container gets (the last).
    spec = parse_spec({"model": {"name": "m", "uri": "/s/m.onnx"}, "template": {"env": [{"name": "X", "value": "1"}]}})
    spec.template.env[0].__dict__["name"] = "ELASTISERVE_MODEL_STORE"
    env = builders.server_env(spec, "m", spec.primary)
    stores = [e for e in env if e["name"] == "ELASTISERVE_MODEL_STORE"]
    assert stores == [{"name": "ELASTISERVE_MODEL_STORE", "value": "/s"}]


@pytest.mark.parametrize("uri, remote", [("s3://models/minilm", True), ("http://10.250.0.1:8000/minilm", True),
                                         ("file:///models/minilm", False)])
def test_remote_stores_get_a_writable_artifact_cache(uri, remote):
    """The root filesystem is read-only: artifacts read from a bucket or an HTTP store need an emptyDir."""
    md = parse_manifest({"apiVersion": "elastiserve.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "m"},
                         "spec": {"model": {"name": "m", "uri": uri}}})
    dep = builders.build_deployment(md.spec, "m", "ns", "u", md.spec.primary)
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    if remote:
        assert env["ELASTISERVE_ARTIFACT_CACHE_DIR"] == mounts["artifacts"] == builders.ARTIFACTS_DIR
        assert "emptyDir" in volumes["artifacts"]
    else:
        assert "ELASTISERVE_ARTIFACT_CACHE_DIR" not in env and "artifacts" not in volumes


def test_credentials_secret_is_mounted_read_only_with_only_the_s3_keys():
    """model.credentialsSecret: a volume reference to a Secret of the pod's own namespace (the operator never
    reads it), only the AWS_* keys projected, read-only, at the folder the server reads."""
    md = parse_manifest({"apiVersion": "elastiserve.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "m"},
                         "spec": {"model": {"name": "m", "uri": "s3://models/m", "credentialsSecret": "bucket-creds"}}})
    dep = builders.build_deployment(md.spec, "m", "ns", "u", md.spec.primary)
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "s3-credentials"]
    assert mount == {"name": "s3-credentials", "mountPath": builders.CREDENTIALS_DIR, "readOnly": True}
    assert env["ELASTISERVE_S3_CREDENTIALS_DIR"] == builders.CREDENTIALS_DIR
    [vol] = [v for v in pod["volumes"] if v["name"] == "s3-credentials"]
    required, optional = vol["projected"]["sources"]
    assert {s["secret"]["name"] for s in (required, optional)} == {"bucket-creds"}
    assert "namespace" not in str(vol)  # a volume cannot name another namespace; nor do we try
    assert [i["key"] for i in required["secret"]["items"]] == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    assert "optional" not in required["secret"] and optional["secret"]["optional"] is True
    items = [i for s in (required, optional) for i in s["secret"]["items"]]
    assert all(i["key"].startswith("AWS_") and i["path"] == i["key"] for i in items) and len(items) == 7
    assert vol["projected"]["defaultMode"] == 0o440
    # without the field: no volume, no variable (the server uses its environment, e.g. a workload identity)
    plain = parse_manifest({"apiVersion": "elastiserve.dev/v1alpha1", "kind": "ModelDeployment",
                            "metadata": {"name": "m"}, "spec": {"model": {"name": "m", "uri": "s3://models/m"}}})
    dep = builders.build_deployment(plain.spec, "m", "ns", "u", plain.spec.primary)
    assert "s3-credentials" not in str(dep) and "ELASTISERVE_S3_CREDENTIALS_DIR" not in str(dep)


@pytest.mark.parametrize("bad", ["other-ns/creds", "Creds", "creds.with.dots", "-creds", "x" * 64, "../creds", ""])
def test_credentials_secret_must_be_a_plain_name_in_the_namespace(bad):
    with pytest.raises(SpecError, match="credentialsSecret"):
        parse_manifest({"apiVersion": "elastiserve.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "m"},
                        "spec": {"model": {"name": "m", "uri": "s3://models/m", "credentialsSecret": bad}}})
