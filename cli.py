"""The `elastiserve` command line: run the operator, print the CRD, validate manifests, backtest, serve, load."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    name="elastiserve",
    help="Autoscale model-serving workloads on Kubernetes: forecasts, INT8 bursts, lazy sub-models, scale to zero.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def crd() -> None:
    """Print the ModelDeployment CustomResourceDefinition generated from the API models."""
    from .api.crd import render_yaml

    sys.stdout.write(render_yaml())


def load_documents(path: Path) -> list[tuple[str, object]]:
    """YAML documents of a file (or of every *.yaml in a folder) as (source, object) pairs, read with the
    bounded, strict loader (``api/yamlio.py``: duplicate keys, size, depth and alias expansion)."""
    from .api.yamlio import load_file

    files = sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml")) if path.is_dir() else [path]
    docs: list[tuple[str, object]] = []
    for f in files:
        loaded = load_file(f)
        docs += [(f"{f}" + (f"#{i}" if len(loaded) > 1 else ""), d) for i, d in enumerate(loaded)]
    return docs


def _manifests(source: str, doc: object) -> list[tuple[str, object]]:
    """A ``kind: List`` (as ``kubectl get -o yaml`` writes) stands for its items."""
    if isinstance(doc, dict) and doc.get("kind") == "List" and doc.get("apiVersion") == "v1":
        items = doc.get("items")
        if isinstance(items, list):
            return [(f"{source}.items[{i}]", item) for i, item in enumerate(items)]
    return [(source, doc)]


@app.command()
def validate(
    path: Path = typer.Argument(..., help="A ModelDeployment YAML file, or a folder of them."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only problems."),
) -> None:
    """Check ModelDeployment manifests offline with the rules the API server and the operator apply.

    Every document must be a ModelDeployment (a v1 List of them is checked item by item): anything else
    is an error, not a skip, so a misspelt kind cannot pass unnoticed."""
    from .api import SpecError, parse_manifest
    from .api.yamlio import ManifestError

    if not path.exists():
        _fail(f"{path}: no such file or folder")
    try:
        docs = load_documents(path)
    except ManifestError as exc:
        _fail(str(exc))
    if not docs:
        _fail(f"{path}: no YAML documents found")
    bad = 0
    for source, doc in [m for s, d in docs for m in _manifests(s, d)]:
        try:
            md = parse_manifest(doc, source)
        except SpecError as exc:
            bad += 1
            typer.echo(str(exc), err=True)
            continue
        if not quiet:
            variants = ", ".join(f"{v.name}({v.role.value})" for v in md.spec.variants)
            typer.echo(f"{source}: ok ({md.metadata.name}: {variants})")
    if bad:
        raise typer.Exit(1)


@app.command()
def run(
    namespace: list[str] = typer.Option([], "--namespace", "-n", help="Watch only these namespaces (repeatable)."),
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A", help="Watch the whole cluster."),
    prometheus_url: Optional[str] = typer.Option(
        None, envvar="ELASTISERVE_PROMETHEUS_URL", help="Default Prometheus URL for specs that name none."
    ),
    prometheus_allowed_url: list[str] = typer.Option(
        [], "--prometheus-allowed-url", envvar="ELASTISERVE_PROMETHEUS_ALLOWED_URLS",
        help="[NAMESPACE=]URL a spec may name in metrics.prometheus.url besides the default (repeatable; "
             "with NAMESPACE: allowed there only, and custom queries may run against it).",
    ),
    custom_queries_namespace: list[str] = typer.Option(
        [], "--custom-queries-namespace", envvar="ELASTISERVE_CUSTOM_QUERIES_NAMESPACES",
        help="Namespace whose specs may run custom PromQL (rules.*.query) on a shared Prometheus (repeatable; * = all).",
    ),
    metrics_port: int = typer.Option(9090, envvar="ELASTISERVE_METRICS_PORT", help="Port of the operator's /metrics."),
    liveness: str = typer.Option(
        "http://0.0.0.0:8081/healthz", envvar="ELASTISERVE_LIVENESS", help="kopf liveness endpoint URL."
    ),
    peering: Optional[str] = typer.Option(
        None, envvar="ELASTISERVE_PEERING", help="kopf peering name for HA (several replicas, one active)."
    ),
    priority: int = typer.Option(0, envvar="ELASTISERVE_PRIORITY", help="Peering priority: the highest acts."),
    peering_lifetime: int = typer.Option(
        60, envvar="ELASTISERVE_PEERING_LIFETIME", help="Seconds before a silent peer counts as gone (takeover bound)."
    ),
    activator_service: Optional[str] = typer.Option(
        None, envvar="ELASTISERVE_ACTIVATOR_SERVICE",
        help="NAMESPACE/NAME of the activator Service; zero-scaled models route to it.",
    ),
    activator_address: list[str] = typer.Option(
        [], "--activator-address", help="IP:PORT of the activator, instead of --activator-service (repeatable)."
    ),
    activator_settle_seconds: float = typer.Option(
        10.0, min=0, max=300, envvar="ELASTISERVE_ACTIVATOR_SETTLE_SECONDS",
        help="Seconds a routing change gets to reach every node's kube-proxy: going to zero, the last replicas "
             "stay this long after the Service points at the activator; waking, the activator stays beside the "
             "pods as long.",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the operator (kopf) until interrupted."""
    from .operator.main import run_operator

    if not namespace and not all_namespaces:
        all_namespaces = True
    run_operator(
        namespaces=namespace,
        all_namespaces=all_namespaces,
        prometheus_url=prometheus_url,
        prometheus_allowed_urls=prometheus_allowed_url,
        custom_queries_namespaces=custom_queries_namespace,
        metrics_port=metrics_port,
        liveness=liveness,
        peering=peering,
        verbose=verbose,
        activator_service=activator_service,
        activator_address=activator_address,
        activator_settle_seconds=activator_settle_seconds,
        priority=priority,
        peering_lifetime=peering_lifetime,
    )


@app.command()
def load(
    model: str = typer.Option(..., "--model", "-m", help="Model name in the inference path (/v2/models/MODEL/infer)."),
    url: list[str] = typer.Option([], "--url", help="Base URL of a replica, e.g. http://127.0.0.1:8080 (repeatable)."),
    endpoints_file: Optional[Path] = typer.Option(
        None, help="JSON file {\"NAMESPACE/NAME\": [url, ...]} re-read as it changes, instead of --url."),
    activator: Optional[str] = typer.Option(None, help="Activator base URL, used while there is no replica."),
    service: str = typer.Option("default/model", help="NAMESPACE/NAME of the ModelDeployment (Host header via the "
                                                      "activator, key in --endpoints-file)."),
    trace: Optional[Path] = typer.Option(None, help="Trace CSV (timestamp_s,requests) whose rate to replay."),
    period: Optional[float] = typer.Option(None, help="Seconds to replay the whole trace in (default: real time)."),
    peak: Optional[float] = typer.Option(None, help="Scale the trace so its busiest moment is PEAK requests/s."),
    qps: Optional[float] = typer.Option(None, help="A constant rate instead of a trace (requests/s)."),
    duration: float = typer.Option(60.0, help="Seconds of load."),
    max_requests: int = typer.Option(200_000, help="Stop after this many requests."),
    seed: int = typer.Option(7, help="Random seed of the arrivals and the request bodies."),
    timeout: float = typer.Option(30.0, help="Seconds before a request counts as failed."),
) -> None:
    """Replay a trace's request rate (or a constant rate) as open-loop Poisson load against a model server on
    this machine, then print what happened as JSON. Bounded by --duration and --max-requests."""
    import asyncio
    import json

    from .loadgen import Constant, LoadGen, TraceCurve

    if (trace is None) == (qps is None):
        _fail("give exactly one of --trace (a rate to replay) or --qps (a constant rate)")
    if url and endpoints_file is not None:
        _fail("give the replicas with --url or with --endpoints-file, not both")
    if not url and endpoints_file is None and not activator:
        _fail("give the replicas with --url (repeatable) or --endpoints-file, or an --activator")
    if service.count("/") != 1:
        _fail(f"--service must be NAMESPACE/NAME (got {service!r})")
    for name, value in (("--duration", duration), ("--timeout", timeout), ("--max-requests", max_requests)):
        if not value > 0:
            _fail(f"{name} must be positive (got {value})")
    if qps is not None and qps < 0:
        _fail(f"--qps must not be negative (got {qps})")
    try:
        rate = Constant(qps) if qps is not None else TraceCurve.load(trace, period, peak)
        gen = LoadGen(service, model, endpoints_file if endpoints_file is not None else url, activator, rate,
                      duration=duration, max_requests=max_requests, seed=seed, timeout=timeout)
    except ValueError as exc:
        _fail(str(exc))
    started = time.monotonic()
    stats = asyncio.run(gen.run())
    typer.echo(json.dumps(stats.summary(time.monotonic() - started), indent=2))
    if stats.ok == 0 and stats.sent > 0:
        raise typer.Exit(1)


def _mount_optional(only: str | None = None) -> None:
    """Sub-commands that live with their own package (serving, simulation): all of them, or ``only`` one.

    A missing module (not written yet) leaves its command out; any other import error is raised.
    """
    import importlib

    mounts = [
        ("serving.cli", lambda m: (app.add_typer(m.model_app, name="model", help="Build, quantize and compare the ONNX model variants."),
                                   app.command("serve", help="Run the model server.")(m.serve))),
        ("simulation.cli", lambda m: app.command("backtest", help="Replay a trace through the policies and write a report.")(m.backtest)),
        ("serving.activator", lambda m: app.command("activator", help="Run the activator (scale-from-zero proxy).")(m.activator)),
    ]
    for module, mount in mounts:
        if only is not None and module != only:
            continue
        name = f"{__package__}.{module}"
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        mount(mod)


_CORE = {"validate", "crd", "run", "load"}
"""Commands that need none of the optional mounts: `elastiserve validate` must not pay for importing
statsmodels and pandas (the backtest command) or onnxruntime (the model server)."""


def _command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


_MOUNT_FOR = {"serve": "serving.cli", "model": "serving.cli", "activator": "serving.activator",
              "backtest": "simulation.cli"}
"""The one mount a command needs. Every model-server pod starts with `elastiserve serve`: importing the
backtest's statsmodels/scipy too cost it ~13 s of its start on a real node's 500m CPU limit."""


def _is_our_command_line() -> bool:
    """sys.argv is ours (the `elastiserve` script, `python -m elastiserve.cli`), not an importer's (pytest)."""
    prog = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    return prog.name == "elastiserve" or (prog.suffix == ".py" and prog.resolve() == Path(__file__).resolve())


_COMMAND = _command(sys.argv[1:]) if _is_our_command_line() else None
if _COMMAND not in _CORE:
    _mount_optional(_MOUNT_FOR.get(_COMMAND))  # anything else (--help, a typo): every command, for the listing


def main() -> None:
    app()


if __name__ == "__main__":
    main()
