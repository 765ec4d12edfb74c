# Modelship: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONSTRAINTS := constraints.txt
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(CONSTRAINTS) | sha256sum | cut -c1-12)
CLIENTS_VENV := .build/clients-venv
CLIENTS_REQUIREMENTS := tests/server/clients/requirements.txt
CLIENTS_STAMP := $(CLIENTS_VENV)/.installed-$(shell sha256sum < $(CLIENTS_REQUIREMENTS) | cut -c1-12)
CLUSTER := hack/cluster
export KUBECONFIG := $(CURDIR)/.cluster/kubeconfig

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(CONSTRAINTS) --upgrade pip
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[dev,server,cli]'
	rm -f $(VENV)/.installed-* && touch $@

.PHONY: install
install: $(STAMP) ## create .venv and install modelship with its server, cli and dev extras, at the versions of constraints.txt

$(CLIENTS_STAMP): $(CLIENTS_REQUIREMENTS)
	rm -rf $(CLIENTS_VENV)
	$(PYTHON) -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/python -m pip install -q --disable-pip-version-check -r $(CLIENTS_REQUIREMENTS)
	touch $@

.PHONY: clients
clients: $(CLIENTS_STAMP) ## the V2/V1 client libraries the server's tests drive it with (tritonclient, KServe SDK), in .build/clients-venv

.PHONY: lock
lock: ## regenerate constraints.txt from a fresh, unconstrained install of .[dev,server,cli] (then run the tests)
	hack/lock

.PHONY: cluster-build
cluster-build: ## compile the pinned Kubernetes binaries into ~/.cache/modelship (cold: long; warm: seconds)
	$(CLUSTER) build

.PHONY: deps
deps: ## install the Debian packages of the real node, the images and Prometheus (root; quick when present)
	hack/deps

.PHONY: images
images: deps install ## build the server, operator, model-store and test images with podman into .build/images (no Docker)
	hack/images

.PHONY: cluster-up
cluster-up: cluster-build ## start the local cluster (idempotent) and write .cluster/kubeconfig
	$(CLUSTER) up

.PHONY: cluster-down
cluster-down: ## stop the local cluster (the demo with it) and remove its state
	$(CLUSTER) down

.PHONY: cluster-status
cluster-status: ## say what of the local cluster runs
	$(CLUSTER) status

.PHONY: argocd-up
argocd-up: cluster-up ## start Argo CD (application controller, repo server, Redis, a git daemon) on the local cluster, with Modelship's health check
	hack/argocd up

.PHONY: argocd-down
argocd-down: ## stop what `make argocd-up` started
	hack/argocd down

.PHONY: demo
demo: install deps cluster-build images ## the main job: cluster with its real node, the operator installed by helm, examples/minimal.yaml serving a real prediction
	hack/demo

.PHONY: demo-canary
demo-canary: install ## after `make demo`: roll version 2 out with examples/canary.yaml under live traffic, watching until Healthy
	hack/demo canary

.PHONY: demo-stop
demo-stop: ## uninstall the demo's operator and delete its namespace
	hack/demo stop

.PHONY: test
test: install clients deps cluster-build images ## run every test on the local cluster, its real node and Prometheus (starts them when needed)
	$(CLUSTER) up --real-node
	@mkdir -p .build && rm -f .build/test-results.xml
	$(PY) -m pytest -ra --junitxml=.build/test-results.xml

.PHONY: test-unit
test-unit: install clients ## run only the tests that need no cluster
	$(PY) -m pytest -ra -m 'not cluster'

.PHONY: bench-rollout
bench-rollout: install cluster-up ## time a bad canary's rollback: first failing request to all traffic on stable
	$(PY) bench/rollout.py

.PHONY: bench-shadow
bench-shadow: install cluster-up ## a shadow step: what copying costs the stable server, then a wrong-but-healthy canary's abort and the wrong answers users got
	$(PY) bench/shadow.py

.PHONY: bench-keepalive
bench-keepalive: install ## requests lost by keep-alive clients (wrk, pooled) while a good canary rolls out on the real node
	$(CLUSTER) up --real-node
	$(PY) bench/keepalive.py

.PHONY: bench-rebalance
bench-rebalance: install ## how fast a pod added under keep-alive load gets its share, per connection bound (PNG too)
	$(CLUSTER) up --real-node
	$(PY) bench/rebalance.py --png bench/figures/rebalance.png

.PHONY: bench-autoscale
bench-autoscale: install ## the HPA under a step load (1 → 8 → 32 connections), on CPU and on in-flight requests (PNG too)
	$(CLUSTER) up --real-node
	$(PY) bench/autoscale.py --step-seconds 45 --png bench/figures/autoscale.png

.PHONY: bench-server-limits
bench-server-limits: install ## the server under heavy input: peak RSS against body size, probe latency during a large request, req/s before/after (PNG too)
	$(PY) bench/server_limits.py --png bench/figures/server_limits.png

.PHONY: bench-fetch
bench-fetch: install ## the init container's s3:// fetch against KServe's storage initializer: 1 GiB from versitygw on loopback, MB/s and peak RSS
	$(PY) bench/fetch.py

.PHONY: lint
lint: install ## ruff and mypy
	$(VENV)/bin/ruff check operator server_image tests bench hack
	$(VENV)/bin/ruff format --check operator server_image tests bench hack
	$(VENV)/bin/mypy operator/modelship server_image/modelship

.PHONY: fmt
fmt: install ## format the Python code
	$(VENV)/bin/ruff check --fix operator server_image tests bench hack
	$(VENV)/bin/ruff format operator server_image tests bench hack

.PHONY: clean
clean: ## remove .venv and caches (not the binary cache in ~/.cache/modelship)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

.PHONY: chart-crds
chart-crds: ## copy crds/ into the Helm chart (tests/helm/test_crds_in_sync.py fails when they differ)
	rm -f helm/modelship/crds/*.yaml
	cp crds/*.yaml helm/modelship/crds/

.PHONY: helm-lint
helm-lint: ## helm lint --strict the chart with the pinned helm
	$$($(CLUSTER) bin-dir)/helm lint --strict helm/modelship
