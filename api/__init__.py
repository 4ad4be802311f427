"""The ModelDeployment API: pydantic models that are the single source of the CRD schema."""

from .crd import API_VERSION, GROUP, KIND, PLURAL, VERSION
from .decision import Decision, Forecast, ForecastPoint, MetricSnapshot, Observation, ScalerState
from .resource import ModelDeployment, SpecError, parse_manifest, parse_spec
from .spec import ModelDeploymentSpec, Role, Variant
from .status import Condition, ModelDeploymentStatus

__all__ = [
    "API_VERSION", "GROUP", "KIND", "PLURAL", "VERSION",
    "Condition", "Decision", "MetricWindow", "Forecast", "ForecastPoint", "MetricSnapshot", "ModelDeployment",
    "ModelDeploymentSpec", "ModelDeploymentStatus", "Observation", "Role", "ScalerState", "SpecError",
    "Variant", "parse_manifest", "parse_spec",
]


def __getattr__(name: str):
    # MetricWindow needs numpy: imported on first use, so `elastiserve validate` stays fast.
    if name == "MetricWindow":
        from .window import MetricWindow

        return MetricWindow
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
