"""The status entries, condition and Events for sub-models the servers cannot load (pure function)."""

from __future__ import annotations

from elastiserve.api.status import ModelDeploymentStatus
from elastiserve.operator.loadfailures import MAX_ENTRIES, load_failure_report


def test_new_failures_make_one_warning_each_and_a_false_condition():
    r = load_failure_report({("legal", "no_such_key"): 2, ("tax", "access_denied"): 1}, None)
    assert r.entries == [
        {"model": "legal", "cause": "no_such_key", "pods": 2,
         "message": "no such key: the object is not in the bucket (publish it or fix the URI) (2 pods)"},
        {"model": "tax", "cause": "access_denied", "pods": 1,
         "message": "access denied: check the credentials and the bucket policy (1 pod)"},
    ]
    assert (r.loaded, r.reason) == (False, "LoadFailed")
    assert r.message == "2 sub-model(s) cannot be loaded: legal (no_such_key), tax (access_denied)"
    assert [(t, reason) for t, reason, _ in r.events] == [("Warning", "SubModelLoadFailed")] * 2
    assert r.events[0][2].startswith("sub-model 'legal' cannot be loaded: no_such_key: ")
    # the entries are valid status (the CRD's schema comes from the same model)
    ModelDeploymentStatus.model_validate({"subModelLoadFailures": r.entries})


def test_a_persisting_failure_posts_no_new_event_and_a_recovery_posts_one():
    first = load_failure_report({("legal", "no_such_key"): 2}, None)
    again = load_failure_report({("legal", "no_such_key"): 3}, first.entries)
    assert again.events == [] and again.entries[0]["pods"] == 3
    other_cause = load_failure_report({("legal", "endpoint_unreachable"): 1}, again.entries)
    assert [e[1] for e in other_cause.events] == ["SubModelLoadFailed"]
    healed = load_failure_report({}, other_cause.entries)
    assert healed.entries == [] and (healed.loaded, healed.reason) == (True, "AllLoaded")
    assert healed.events == [("Normal", "SubModelLoaded", "sub-model 'legal' loads again")]
    assert load_failure_report({}, []).events == []


def test_label_values_from_pods_are_bounded_before_status_and_events():
    r = load_failure_report({('x"; rm -rf /' + "a" * 100, "made-up cause"): 1, ("ok", "too_large"): 0}, None)
    [e] = r.entries  # zero pods is no failure
    assert e["cause"] == "other" and len(e["model"]) == 63 and set(e["model"]) <= set("x_rm-fa")
    many = load_failure_report({(f"m{i:03d}", "no_such_key"): 1 + (i == 7) for i in range(100)}, None)
    assert len(many.entries) == MAX_ENTRIES and "m007" in {x["model"] for x in many.entries}  # busiest kept
    assert len(many.events) == 6 and many.events[-1][2].startswith("27 more sub-model(s) cannot be loaded")
    assert many.message.startswith("100 sub-model(s) cannot be loaded: ") and many.message.endswith("and 92 more")


async def test_read_load_failures_only_with_sub_models_and_none_on_query_errors():
    from elastiserve.api import parse_spec
    from elastiserve.metrics import QueryFailed
    from elastiserve.operator.loadfailures import read_load_failures

    class Source:  # a stand-in for PrometheusSource (its query is tested in tests/unit/metrics)
        def __init__(self, result):
            self.result, self.calls = result, []

        def load_failures(self, namespace, name):
            self.calls.append((namespace, name))
            if isinstance(self.result, Exception):
                raise self.result
            return self.result

    base = {"model": {"name": "m", "uri": "s3://b/m"}, "variants": [{"name": "fp32"}]}
    with_subs = parse_spec({**base, "model": {**base["model"], "subModels": [{"name": "legal", "uri": "s3://b/l"}]}})
    ok = Source({("legal", "no_such_key"): 1})
    assert await read_load_failures(ok, with_subs, "ns", "emb") == {("legal", "no_such_key"): 1}
    assert ok.calls == [("ns", "emb")]
    assert await read_load_failures(Source(QueryFailed("503")), with_subs, "ns", "emb") is None
    assert await read_load_failures(ok, parse_spec(base), "ns", "emb") is None and len(ok.calls) == 1
