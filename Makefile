# ssm-operator: the two commands are `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo

.PHONY: all build release test test-deps lint unit e2e checks bench demo crds clean

all: build

build:
	$(CARGO) build --workspace --locked

## release: the build the Dockerfile runs.
release:
	$(CARGO) build --release --locked --bin ssm-operator

## test: everything CI runs. Installs what it needs (apt, pip venv, envtest binaries; cached).
test: test-deps lint unit e2e checks

test-deps:
	bash hack/test-deps.sh
	bash hack/envtest-assets.sh > /dev/null

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

## unit: unit tests, reconciler (tower-test) tests, CRD drift, simulator and test-bed tests.
unit:
	KUBEBUILDER_ASSETS="$$(bash hack/envtest-assets.sh)" \
	  $(CARGO) test --workspace --locked --exclude ssm-operator
	$(CARGO) test --locked -p ssm-operator --lib --bins --test reconciler --test command_reconciler --test crd_drift --test malformed_replies

## e2e: real kube-apiserver + etcd, SSM simulator and moto, the operator binary, and the
## kubectl-ssm plugin (built first: tests/e2e/kubectl_ssm.rs runs it through kubectl).
e2e:
	$(CARGO) build --locked -p kubectl-ssm
	KUBEBUILDER_ASSETS="$$(bash hack/envtest-assets.sh)" SSM_OPERATOR_REQUIRE_MOTO=1 \
	  $(CARGO) test --locked -p ssm-operator --test e2e

## checks: layout (no import circles, small folders), Helm chart, alerts and dashboard (promtool),
## Dockerfile lint, Argo CD health check.
checks:
	python3 hack/check-layout.py
	KUBEBUILDER_ASSETS="$$(bash hack/envtest-assets.sh)" bash hack/check-chart.sh
	KUBEBUILDER_ASSETS="$$(bash hack/envtest-assets.sh)" bash hack/check-monitoring.sh
	bash hack/check-dockerfile.sh
	bash hack/test-argocd-health.sh

## bench: figures for a fleet (BENCH_COMMANDS x BENCH_INSTANCES, default 20 x 500, terminal times over
## BENCH_SPREAD, default 60s) on the operator's default flags;
## BENCH_VARIANT=plain|throttled|push|push-lossy|arrival|arrival-push|arrival-push-lossy|command|
## command-two-step|all|churn (default all: every variant but churn; throttled: SSM throttles above
## BENCH_RATE_LIMIT, default 20 requests/s; push: the operator reads SQS events of every status change,
## push-lossy: 20 % of them dropped; arrival*: the resources are created while the fleet runs, over
## BENCH_ARRIVAL_OVER, default 55s; command, command-two-step: one Command sent by the operator, targets
## resolving to BENCH_NODES nodes, default 5000, over BENCH_LISTED_OVER, default 30s, one-step or two-step
## document; churn: create/expire for ten minutes). BENCH_PROFILE=bench-fast builds without fat LTO, to
## iterate (the figures to report come from the default, release). BENCH_OPERATOR_ARGS adds flags,
## BENCH_OPERATOR_ENV (K=V,K2=V2) environment variables, to the operator only. Not part of test.
bench:
	KUBEBUILDER_ASSETS="$$(bash hack/envtest-assets.sh)" $(CARGO) bench --locked --bench scale \
	  $(if $(BENCH_PROFILE),--profile $(BENCH_PROFILE))

demo:
	bash hack/demo.sh

## crds: regenerate the CRD YAML from the Rust types (a test fails when they drift).
crds:
	$(CARGO) run --quiet --locked --bin ssm-operator -- crd commandinvocation > crds/commandinvocation.yaml
	$(CARGO) run --quiet --locked --bin ssm-operator -- crd command > crds/command.yaml
	cp crds/commandinvocation.yaml crds/command.yaml charts/ssm-operator/crds/

clean:
	$(CARGO) clean
