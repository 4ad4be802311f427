"""Every spec validation accepts, the real API server accepts, and so do the objects the operator builds.

Hypothesis generates valid ModelDeployments over the edges that used to break the operator (Kubernetes
quantities in every form, long names, ports, env, sub-models, HPA thresholds, memory limits near the
lazy-loading budget, a credentials Secret), checks that ``parse_manifest`` (what ``elastiserve validate`` runs) accepts them,
then server-side dry-run-applies the ModelDeployment and every object the operator's builders make for it
(variant and canary Deployments, Services, the sub-model and hot-set ConfigMaps, the HPA, the activator
routing) to the real local API server: each must be accepted.

Cost: ``EXAMPLES`` specs, about ten dry-run requests each (about a minute on a busy 2-core machine).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from elastiserve.api import API_VERSION, KIND, SpecError, parse_manifest
from elastiserve.operator import builders

pytestmark = pytest.mark.cluster
EXAMPLES = 60

MI = 2**20


def exact_forms(n: int) -> list[str]:
    """Kubernetes quantity spellings that all mean exactly ``n`` (bytes, or cores for cpu)."""
    forms = [str(n), f"{n}e0", f"{n}.", f"{n}.0", f"{n * 1000}m"]
    if n % 1000 == 0:
        forms += [f"{n // 1000}k", f"{n // 1000}e3", f"{n // 1000}E3"]
    if n % 10**6 == 0:
        forms += [f"{n // 10**6}M", f"{n // 10**6}e6"]
    if n % MI == 0:
        forms.append(f"{n // MI}Mi")
    if n % (2**29) == 0:
        forms.append(f"{n / 2**30:g}Gi" if n % 2**30 else f"{n // 2**30}Gi")
    if n == 2**29:
        forms.append(".5Gi")
    return [f for f in forms if len(f) <= 32]


@st.composite
def quantity(draw, n: int) -> str:
    return draw(st.sampled_from(exact_forms(n)))


@st.composite
def cpu(draw, millis: int) -> str:
    forms = [f"{millis}m"]
    if millis % 1000 == 0:
        forms += [str(millis // 1000), f"{millis // 1000}e0"]
    if millis % 100 == 0:
        forms += [f"{millis / 1000:g}", f"{millis // 100}e-1"]
    return draw(st.sampled_from(forms))


dns1035 = st.from_regex(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?", fullmatch=True)
label = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,18}[a-z0-9])?", fullmatch=True)
port_name = st.from_regex(r"[a-z]{1,4}(-[a-z0-9]{1,4}){0,2}", fullmatch=True).filter(lambda s: len(s) <= 15)
env_name = st.from_regex(r"[A-Za-z_][-._A-Za-z0-9]{0,20}", fullmatch=True).filter(
    lambda s: not s.startswith("ELASTISERVE_"))


@st.composite
def resources(draw, budget: int | None) -> dict:
    out: dict = {"requests": {}, "limits": {}}
    if draw(st.booleans()):
        req = draw(st.sampled_from([100, 250, 500, 1000, 2000, 4000]))
        out["requests"]["cpu"] = draw(cpu(req))
        if draw(st.booleans()):
            out["limits"]["cpu"] = draw(cpu(req * draw(st.sampled_from([1, 2]))))
    floor = (budget + 256 * MI) if budget is not None else 64 * MI
    if draw(st.booleans()):
        limit = floor + draw(st.sampled_from([0, MI, 10**6, 2**30, 3 * 10**9]))
        out["limits"]["memory"] = draw(quantity(limit))
        if draw(st.booleans()):
            out["requests"]["memory"] = draw(quantity(draw(st.integers(1, limit // MI)) * MI))
    elif draw(st.booleans()):
        out["requests"]["memory"] = draw(quantity(draw(st.sampled_from([64 * MI, 10**9, 2**31]))))
    if draw(st.booleans()):
        out["requests"]["ephemeral-storage"] = draw(quantity(draw(st.sampled_from([10**9, 2**30]))))
    return {k: v for k, v in out.items() if v}


@st.composite
def specs(draw) -> dict:
    model = draw(label)
    budget = draw(st.sampled_from([MI, 256 * MI, 10**9, 2**30, 1536 * MI]))
    lazy_enabled = draw(st.booleans())
    subs = draw(st.lists(label.filter(lambda s: s != model), max_size=3, unique=True))
    spec: dict = {
        "model": {
            "name": model,
            "uri": draw(st.sampled_from(["file:///models/m.onnx", "s3://bucket/models/$version", "/store/m"])),
            "version": draw(st.from_regex(r"v[0-9]{1,3}(\.[0-9]{1,2})?", fullmatch=True)),
            "subModels": [{"name": s, "uri": f"/store/{s}/$version"} for s in subs],
            "lazyLoading": {"enabled": lazy_enabled, "memoryBudget": draw(quantity(budget)),
                            "preload": draw(st.lists(st.sampled_from([model, *subs]), max_size=2, unique=True))},
        },
    }
    if draw(st.booleans()):  # mounted as a projected volume of its AWS_* keys
        spec["model"]["credentialsSecret"] = draw(st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?",
                                                                fullmatch=True))
    lazy_budget = budget if lazy_enabled else None
    ports = draw(st.lists(st.tuples(port_name, st.integers(1, 65535)), min_size=1, max_size=3,
                          unique_by=(lambda p: p[0], lambda p: p[1])))
    spec["template"] = {
        "ports": [{"name": n, "containerPort": p} for n, p in ports],
        "env": [{"name": n, "value": draw(st.text(max_size=20))} for n in draw(st.lists(env_name, max_size=3))],
        "resources": draw(resources(lazy_budget)),
        "args": draw(st.lists(st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30),
                              max_size=3)),
    }
    names = draw(st.lists(label.filter(lambda s: len(s) <= 20), min_size=1, max_size=4, unique=True))
    variants = []
    for i, n in enumerate(names):
        v = {"name": n, "role": "primary" if i == 0 else "burst",
             "precision": draw(st.sampled_from(["fp32", "int8", "pruned"])),
             "capacityQps": draw(st.sampled_from([0.001, 1, 17.5, 1e6]))}
        if draw(st.booleans()):
            v["resources"] = draw(resources(lazy_budget))
        variants.append(v)
    spec["variants"] = variants
    hpa = draw(st.booleans())
    zero = not hpa and draw(st.booleans())
    lo = draw(st.integers(0 if zero else 1, 50))
    spec["replicas"] = {"min": lo, "max": draw(st.integers(max(lo, 1), 10000))}
    spec["actuation"] = "HPA" if hpa else "Deployment"
    spec["scaleToZero"] = {"enabled": zero}
    up = draw(st.sampled_from([0.5, 1, 80, 1e6, 1e9]))
    spec["metrics"] = {"rules": {"cpu": {"scaleUpAbove": up, "scaleDownBelow": up / 4,
                                         **({"target": up / 2} if draw(st.booleans()) else {})}}}
    return spec


@pytest.fixture(scope="module")
def api(k8s_cluster, crd):
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    from elastiserve.operator.kube import Kube

    api_client = k8s_config.new_client_from_config(config_file=str(k8s_cluster.kubeconfig))
    return Kube(api_client), k8s.CustomObjectsApi(api_client)


def test_every_accepted_spec_and_its_objects_are_accepted_by_the_api_server(api, namespace):
    kube, custom = api

    # No shrinking: against a real API server it can take many minutes; the failing example is printed.
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
              phases=[Phase.explicit, Phase.reuse, Phase.generate],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                     HealthCheck.filter_too_much, HealthCheck.data_too_large])
    @given(name=dns1035, spec=specs())
    def check(name, spec):
        manifest = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": namespace},
                    "spec": spec}
        try:
            md = parse_manifest(manifest)
        except SpecError:
            assume(False)  # the generator aims at valid specs; the few it misses are not the claim
            return
        # The API server accepts the ModelDeployment itself (OpenAPI schema + CEL)...
        custom.create_namespaced_custom_object("elastiserve.dev", "v1alpha1", namespace, "modeldeployments",
                                               manifest, dry_run="All")
        # ... and every object the operator builds from it.
        uid = "00000000-0000-0000-0000-000000000001"
        s = md.spec
        objs = builders.desired_objects(s, name, namespace, uid)
        objs += [builders.build_deployment(s, name, namespace, uid, v, version="v2", canary=True) for v in s.variants]
        objs.append(builders.build_hpa(s, name, namespace, uid, s.replicas.max))
        objs.append(builders.build_hotset(name, namespace, uid, [s.model.name] + [m.name for m in s.model.sub_models]))
        objs.append(builders.build_service_to_activator(s, name, namespace, uid))
        objs.append(builders.build_activator_slice(name, namespace, uid, ["10.0.0.1"], 8080))
        for obj in objs:
            kube.apply_sync(obj, dry_run=True)  # raises ApiException (the API server's message) if refused

    check()
