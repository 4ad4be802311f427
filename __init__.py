"""elastiserve: a Kubernetes operator that autoscales model-serving workloads."""

__version__ = "0.1.0"
