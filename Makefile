# Developer entry points. `make help` lists them.
# The two commands a newcomer needs: `make run` and `make test`.

CARGO ?= cargo

.PHONY: help run test test-rust test-chart test-images images test-load test-under-load fmt lint generate check-generated bench bench-memory e2e fuzz test-console

help: ## List targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

run: ## Build and start API + proxy locally with a fresh token (no cluster needed)
	./hack/quickstart.sh

test: test-rust test-kube-cluster test-chart test-images test-console ## Every test CI runs: Rust suites (SQLite + PostgreSQL when reachable), the API test server's suites against its standalone binary, chart checks, the images under podman, the console in Chromium

test-rust: ## Rust unit, component and cross-component tests
	$(CARGO) nextest run --workspace --locked --no-fail-fast

# KUBE_TEST_KUBECONFIG=/tmp/kind.kubeconfig runs them against that cluster instead.
.PHONY: test-kube-cluster
test-kube-cluster: ## The API test server's semantics and watch suites against a cluster (KUBE_TEST_KUBECONFIG; default: its standalone binary, about 15 s)
	KUBE_TEST_KUBECONFIG=$(KUBE_TEST_KUBECONFIG) CARGO=$(CARGO) ./hack/test-kube-cluster.sh

test-chart: ## helm lint/template + offline manifest validation + policy assertions
	./hack/check-chart.sh

images: ## Build the three images with buildah from host release binaries: target/images/*.tar (OCI)
	./hack/images.sh

test-images: ## Build the images, then run the chart's pods with them under podman (skips where containers cannot run)
	./hack/test-images.sh

test-console: ## Browser tests of `kubectl apitoken ui` in Debian's Chromium (npm playwright-core, about 30 s)
	$(CARGO) build -q --locked -p prodgy-operator -p prodgy-proxy -p prodgy-api
	$(CARGO) build -q --locked -p kubectl-apitoken --example console_stack
	cd cli/ui/tests && npm ci --no-audit --no-fund --silent
	cd cli/ui/tests && PRODGY_BIN_DIR=$(CURDIR)/target/debug npm test

test-load: ## The operator's load measurement (ignored by `make test`, about 40 s)
	$(CARGO) nextest run -p prodgy-operator --test load --run-ignored only --locked

# The hog is also bounded by its own timeout, in case make itself is killed.
LOAD_CPUS ?= 2
test-under-load: ## `make test` while stress-ng keeps LOAD_CPUS (2) cores busy; the hog stops with the tests
	@command -v stress-ng >/dev/null || { echo "test-under-load needs stress-ng (apt-get install stress-ng)"; exit 1; }
	stress-ng --cpu $(LOAD_CPUS) --timeout 2h --quiet & hog=$$!; \
	trap 'kill $$hog 2>/dev/null; wait $$hog 2>/dev/null' EXIT; trap 'exit 130' INT TERM; \
	$(MAKE) test

fmt: ## Format all Rust code
	$(CARGO) fmt --all

lint: ## Formatting check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

generate: ## Regenerate the CRD YAML (and the chart's copy) from the Rust types
	$(CARGO) run -q -p prodgy-crds --bin crdgen > crds/apitoken.yaml
	./hack/sync-chart-crds.sh

check-generated: generate ## Fail when generated files differ from what is committed
	git diff --exit-code -- crds/apitoken.yaml charts/prodgy/templates

bench: ## Proxy benchmark (release build, loopback, interleaved rounds), then instructions per request
	./bench/run.sh
	./bench/instructions.sh

bench-memory: ## The proxy with 1,000,000 tokens: ready time, CPU time, RSS (BASELINE=older binary for a side-by-side run)
	./bench/memory.sh

e2e: ## kind end-to-end suite (needs Docker and kind; skips with a message otherwise)
	./hack/kind-e2e.sh

fuzz: ## Fuzz the proxy's header and token parser for 60 s (nightly)
	cd fuzz && $(CARGO) +nightly fuzz run authorization -- -max_total_time=60
