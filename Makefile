# Braid: build, test and run the mesh. `make help` lists the targets.
#
# The cluster tests run against the local test cluster (e2e/cluster/), unless KUBECONFIG is set:
# then they run against that cluster, which must already have the images.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
CLUSTER := e2e/cluster/scripts
export KUBECTL ?= $(CURDIR)/$(CLUSTER)/kubectl.sh
# Images of the project's binaries, packed without Docker and imported into the test cluster.
IMAGE_TAG ?= dev
IMAGES := braid.local/braid-shop:$(IMAGE_TAG)=braid-shop braid.local/braid-operator:$(IMAGE_TAG)=braid-operator \
  braid.local/braid-webhook:$(IMAGE_TAG)=braid-webhook
# The proxy image also carries iptables for `braid-proxy init`: both multi-call binaries (legacy
# and nft), their extension modules, the command names init runs, and the lock file.
XTABLES := /usr/lib/x86_64-linux-gnu/xtables
PROXY_IMAGE_EXTRAS := --file=/usr/sbin/xtables-legacy-multi --file=/usr/sbin/xtables-nft-multi \
  --file=$(XTABLES) --empty=/run/xtables.lock \
  $(foreach variant,legacy nft,$(foreach command,save restore,\
    --link=/usr/sbin/iptables-$(variant)-$(command)=xtables-$(variant)-multi))

.PHONY: help
help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

.PHONY: test
test: fmt-check clippy crd-check unit netns-test e2e ## Everything CI runs: lint, CRD drift, unit, network-namespace and cluster tests.

.PHONY: rust-components
rust-components: ## The toolchain's rustfmt and clippy (rust-toolchain.toml pins the version).
	@rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add rustfmt clippy

.PHONY: fmt-check
fmt-check: rust-components ## cargo fmt --check.
	$(CARGO) fmt --all -- --check

.PHONY: clippy
clippy: ## cargo clippy on every target, warnings denied.
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p braid-proxy -p braid-e2e --test netns --test mesh --test teardown --bench proxy -- -D warnings

.PHONY: crds
crds: ## Regenerate config/crd/ from the Rust types.
	$(CARGO) run -q -p braid-operator --bin crdgen -- config/crd

.PHONY: crd-check
crd-check: ## Fail when config/crd/ differs from what the Rust types generate.
	@tmp=$$(mktemp -d) && $(CARGO) run -q -p braid-operator --bin crdgen -- $$tmp && \
	  diff -ru config/crd $$tmp || { echo "config/crd/ is stale: run 'make crds'"; rm -rf $$tmp; exit 1; }; rm -rf $$tmp

.PHONY: unit
unit: ## Unit tests (no cluster, no root).
	$(CARGO) test --workspace --exclude braid-e2e

.PHONY: bench
bench: bench-proxy ## Every benchmark: the proxy's, then the webhook's and operator's on the local cluster (or KUBECONFIG's); results under bench/results/.
ifndef KUBECONFIG
	$(MAKE) cluster-up install
endif
	KUBECONFIG=$${KUBECONFIG:-/var/lib/braid-cluster/kubeconfig} $(CARGO) run --release -q -p braid-e2e --bin bench-webhook
	$(CARGO) build --release -q -p braid-e2e --bin bench-operator
	KUBECONFIG=$${KUBECONFIG:-/var/lib/braid-cluster/kubeconfig} $(IN_CLUSTER_NETNS) \
	  $${CARGO_TARGET_DIR:-$(CURDIR)/target}/release/bench-operator

# The operator benchmark asks running proxies on their pod IPs: on the local test cluster those
# are routed only inside its network namespace.
IN_CLUSTER_NETNS = $(if $(and $(wildcard /run/netns/braid-cluster),$(if $(filter-out /var/lib/braid-cluster/kubeconfig,$(KUBECONFIG)),,local)),nsenter --net=/run/netns/braid-cluster --)

# BASELINE=<git revision>: the proxy (bench-proxy) or the operator (bench-operator-ab) of that
# revision is measured beside this one's. Its binary is built once in a worktree and cached
# outside the clone, by revision, in a directory of its own: an image's entrypoint and the
# benchmarks' process matches go by the binary's name. Both proxies are `cargo build --release
# -p braid-proxy`: the binary `cargo bench` builds carries features of the benchmark's
# dev-dependencies, and would not compare like with like.
BASELINE ?=
BASELINE_DIR := /var/cache/braid/baseline
# $(call baseline_binary,PACKAGE): where BASELINE's build of PACKAGE's binary (of the same name) is.
baseline_binary = $(BASELINE_DIR)/$(1)-$$(git rev-parse --short $(BASELINE))/$(1)
# $(call build_baseline,PACKAGE): builds it there unless it is.
define build_baseline
	@bin=$(call baseline_binary,$(1)) && if [ ! -x $$bin ]; then \
	  rm -rf $(BASELINE_DIR)/src && git worktree add -f --detach $(BASELINE_DIR)/src $(BASELINE) && \
	  (cd $(BASELINE_DIR)/src && CARGO_TARGET_DIR=$(BASELINE_DIR)/target $(CARGO) build --release -p $(1)) && \
	  mkdir -p $$(dirname $$bin) && cp $(BASELINE_DIR)/target/release/$(1) $$bin && \
	  git worktree remove --force $(BASELINE_DIR)/src; fi
endef
# The build under test, copied aside: `cargo bench` writes its own build of the binary, with the
# benchmark's dev-dependency features, to the same target/release/braid-proxy.
PROXY_UNDER_TEST := $${CARGO_TARGET_DIR:-$(CURDIR)/target}/bench-braid-proxy
BUILD_PROXY_UNDER_TEST = $(CARGO) build --release -p braid-proxy && \
	cp $${CARGO_TARGET_DIR:-$(CURDIR)/target}/release/braid-proxy $(PROXY_UNDER_TEST)

.PHONY: bench-proxy
bench-proxy: test-deps ## The proxy against direct, HAProxy and nginx (and BASELINE=<rev>'s build), in network namespaces (root); bench/results/proxy.md.
	$(call apt_install,haproxy nginx-light nghttp2-client curl valgrind)
ifneq ($(BASELINE),)
	$(call build_baseline,braid-proxy)
	$(BUILD_PROXY_UNDER_TEST)
	BRAID_PROXY=$(PROXY_UNDER_TEST) BRAID_BASELINE_PROXY=$(call baseline_binary,braid-proxy) $(CARGO) bench -p braid-proxy --bench proxy
else
	$(BUILD_PROXY_UNDER_TEST)
	BRAID_PROXY=$(PROXY_UNDER_TEST) $(CARGO) bench -p braid-proxy --bench proxy
endif

# The operator of BASELINE=<git revision> and this build's, in turns, PAIRS runs of the operator
# benchmark each.
PAIRS ?= 2
.PHONY: bench-operator-ab
bench-operator-ab: ## The operator benchmark with BASELINE=<rev>'s operator and this build's in turns (PAIRS runs each), on the local cluster; bench/results/operator-ab.md.
	@[ -n "$(BASELINE)" ] || { echo "BASELINE=<git revision> is required" >&2; exit 1; }
	$(call build_baseline,braid-operator)
	$(MAKE) cluster-up install
	CARGO=$(CARGO) $(CLUSTER)/operator-ab.sh $(BASELINE) $(call baseline_binary,braid-operator) $(PAIRS)

# Fuzz targets (cargo fuzz, libFuzzer): the proxy's parsers (proxy/fuzz/) and the webhook's
# AdmissionReview parser (webhook/fuzz/). Their build is cached outside the clone.
PROXY_FUZZ_TARGETS := h1_request h1_response chunked detect client_hello proxy_json init_flags
FUZZ_SECONDS ?= 60
export FUZZ_TARGET_DIR ?= /var/cache/braid/fuzz-target

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZ_SECONDS each (default 60; needs nightly Rust and cargo-fuzz).
	@cargo +nightly --version >/dev/null 2>&1 || { echo "make fuzz needs nightly Rust (rustup toolchain install nightly)"; exit 1; }
	@cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	@for target in $(PROXY_FUZZ_TARGETS); do \
	  echo "fuzz: $$target for $(FUZZ_SECONDS) s"; \
	  (cd proxy/fuzz && cargo +nightly fuzz run --target-dir $(FUZZ_TARGET_DIR) -O $$target corpus/$$target -- \
	    -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 2>&1 | grep -E 'stat::number_of_executed_units|Done|ERROR|panicked|SUMMARY' ; \
	    test $${PIPESTATUS[0]} -eq 0) || exit 1; \
	done
	cd webhook/fuzz && cargo +nightly fuzz run --target-dir $(FUZZ_TARGET_DIR) review corpus/review -- -max_total_time=$(FUZZ_SECONDS)

# Installs the Debian packages in $(1) that are missing (one apt-get for all of them).
define apt_install
@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
if [ -n "$$missing" ]; then echo "installing:$$missing"; apt-get update -qq && \
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi
endef

.PHONY: test-deps
test-deps: ## Install what the network-namespace tests need (Debian packages: iptables, tcpdump, ...).
	$(call apt_install,iptables iproute2 tcpdump openssl curl util-linux)

.PHONY: netns-test
netns-test: test-deps ## Network-namespace tests (root): real iptables and sockets in namespaces the tests create.
	$(CARGO) test -p braid-proxy --test netns --test mesh

.PHONY: cluster-deps
cluster-deps: ## Install the test cluster's Debian packages (containerd, runc, CNI plugins, iptables).
	$(call apt_install,containerd runc containernetworking-plugins iptables conntrack iproute2 curl)

.PHONY: cluster-up
cluster-up: cluster-deps images ## Start the local single-node cluster (idempotent); prints the kubeconfig path.
	$(CLUSTER)/cluster-up.sh

.PHONY: cluster-down
cluster-down: ## Stop the local cluster and remove everything it made.
	$(CLUSTER)/cluster-down.sh

.PHONY: images
images: ## Build release binaries and pack them as OCI image archives under target/images/.
	$(CARGO) build --release $(foreach image,$(IMAGES),-p $(lastword $(subst =, ,$(image)))) -p braid-proxy
	@for image in $(IMAGES); do \
	  $(CLUSTER)/images.sh pack $${image%%=*} target/release/$${image##*=}; done
	$(CLUSTER)/images.sh pack braid.local/braid-proxy:$(IMAGE_TAG) target/release/braid-proxy $(PROXY_IMAGE_EXTRAS)
	@if [ -S /run/braid-cluster/containerd.sock ]; then $(CLUSTER)/images.sh import; fi

.PHONY: demo
demo: ## The local cluster (started if needed), images, Braid from manifests, then the demo shop through the mesh.
	@$(CLUSTER)/plan.sh
	$(MAKE) cluster-up
	$(MAKE) install
	KUBECTL="$(KUBECTL)" examples/shop/demo.sh

.PHONY: install
install: ## Install Braid on the cluster of KUBECONFIG (default: the local test cluster).
	$(KUBECTL) apply -k config
	$(KUBECTL) wait --for=condition=Established crd/meshes.braid.dev crd/meshpolicies.braid.dev crd/meshroutes.braid.dev --timeout=60s
# Server-side apply creates or updates in one request: the operator may create the default
# Mesh between a client-side apply's lookup and its create (AlreadyExists). The file wins.
	$(KUBECTL) apply --server-side --force-conflicts --field-manager=braid-install -f config/operator/mesh.yaml
	$(KUBECTL) rollout status deployment/braid-operator -n braid-system --timeout=180s
	$(KUBECTL) rollout status deployment/braid-webhook -n braid-system --timeout=180s

.PHONY: uninstall
uninstall: ## Remove Braid and everything it made (mesh objects, proxy ConfigMaps, identity Secrets).
	-$(KUBECTL) delete meshroutes,meshpolicies --all -A --ignore-not-found --wait=true
	-$(KUBECTL) delete -f config/operator/mesh.yaml --ignore-not-found
	$(KUBECTL) delete -k config --ignore-not-found --wait=true
	$(KUBECTL) delete configmaps,secrets -A -l app.kubernetes.io/managed-by=braid-operator --ignore-not-found

.PHONY: e2e
e2e: ## Cluster tests: a fresh local cluster (unless KUBECONFIG is set), the tests, then teardown.
ifdef KUBECONFIG
	$(CARGO) test -p braid-e2e -- --test-threads=1
else
	$(CLUSTER)/cluster-down.sh --purge
	$(MAKE) cluster-up
	$(MAKE) install
	$(CARGO) test -p braid-e2e -- --test-threads=1
	$(CARGO) test -p braid-e2e --test teardown
endif
