"""The kopf operator: handlers and actuation only (decisions live in ``elastiserve.scaling``)."""
