# muster — developer entry points. Needs only a Rust toolchain and apt; everything else is installed by `tools`.
#
#   make tools      nats-server >= 2.10 (into .tools/ unless one is on PATH), rustfmt and clippy
#   make build      every binary: muster-server (with its test failpoints), muster (CLI), muster-agent
#   make lint       cargo fmt --check, clippy and rustdoc (intra-doc links) with warnings as errors
#   make test       tools + lint + build + the whole test suite against a real nats-server
#   make nemesis    50 leader faults under load on an HA ensemble (release binaries, ~10 min)
#   make chaos      FAULTS=100 random faults under load on the Docker deployment; writes docs/reliability.md
#   make fuzz       every cargo-fuzz target (fuzz/) long enough for >= 1 million executions each (~40 min)
#   make fuzz-ci    every cargo-fuzz target for 20 s (CI)
#   make deb        Debian packages muster-server, muster-agent, muster-cli (release binaries) into target/debian/
#   make images     container images muster-nats, muster-server, muster-agent from release binaries (docs/deploy.md)
#   make demo       nats-server, muster-server and three agents under .demo/ with the toy stack deployed, left running
#   make demo-stop  stop what `make demo` started (agents, toy daemons, server, nats-server)
#   make clean      demo-stop, cargo clean, remove .demo/ (keeps the downloaded .tools/)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo

.PHONY: tools build lint test bench bench-quick demo demo-stop clean deb cargo-deb

# rustfmt and clippy: the toolchain's default profile has both, a minimal one does not, and `lint` needs them.
tools:
	@scripts/install-nats.sh
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy

# The failpoints feature compiles muster-server's test hooks in; they act only when FAILPOINTS names them (the
# end-to-end tests set it), and release builds (`bench`) leave them out.
FEATURES := --features muster-server/failpoints

build:
	$(CARGO) build --workspace --bins $(FEATURES)

lint: tools
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets $(FEATURES) -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --quiet

# The end-to-end tests run the binaries from target/debug, which `cargo test` does not build for another package,
# hence `build` first. MUSTER_NATS_SERVER and PATH point at the nats-server `tools` chose. tests/tests/packages.rs
# packages those binaries with cargo-deb (hence `cargo-deb`) and installs them in a Debian container.
# One test at a time: each end-to-end test runs its own nats-server(s), muster-servers and agents (the HA tests a
# 3-node NATS cluster and three servers), and on 2 cores two of those at once starve each other's timers.
test: tools cargo-deb lint build
	nats="$$(scripts/install-nats.sh --path)"; \
	MUSTER_NATS_SERVER="$$nats" PATH="$$(dirname "$$nats"):$$PATH" $(CARGO) test --workspace $(FEATURES) -- --test-threads=1

# The driver (tests/src/bin/bench) starts its own nats-server, release muster-server and swarms on random ports, and
# writes docs/benchmarks.md only if every scenario completed; a failed run exits non-zero and keeps its logs under
# target/bench/.
bench: tools
	$(CARGO) build --release -p muster-server -p muster-cli -p muster-agent -p muster-tests
	MUSTER_NATS_SERVER="$$(scripts/install-nats.sh --path)" target/release/bench

bench-quick: tools
	$(CARGO) build --release -p muster-server -p muster-cli -p muster-agent -p muster-tests
	MUSTER_NATS_SERVER="$$(scripts/install-nats.sh --path)" target/release/bench --quick

# The nemesis (tests/tests/nemesis.rs): 50 leader faults (SIGKILL, SIGSTOP past the lease) at random points under
# small requests on real agents and requests on 5,000 simulated hosts, then 0 lost / 0 half-applied / 0 run twice;
# release binaries, about 10 minutes. Not part of `test`.
.PHONY: nemesis
nemesis: tools
	$(CARGO) build --release -p muster-server -p muster-cli -p muster-agent
	nats="$$(scripts/install-nats.sh --path)"; \
	MUSTER_BIN_DIR="$$PWD/target/release" NEMESIS_FAULTS=50 NEMESIS_SWARM=5000 MUSTER_NATS_SERVER="$$nats" \
	PATH="$$(dirname "$$nats"):$$PATH" $(CARGO) test -p muster-tests --test nemesis -- --include-ignored --nocapture

# The Docker nemesis (tests/tests/chaos.rs, nemesis_writes_the_reliability_report): compose.yaml with
# tests/chaos/compose.chaos.yaml, FAULTS faults picked at random (SIGKILL, freeze or cut-off of the leader, the
# follower, the observer, an agent; a NATS node stopped) under request load, then the checker; writes
# docs/reliability.md (history and summary). Debug binaries, as `make test` builds them; about 25 s a fault on 2
# cores. CHAOS_SEED=N repeats a run's picks. `make test` runs a short one (4 faults) in the same test binary.
FAULTS ?= 100
.PHONY: chaos
chaos: tools build
	nats="$$(scripts/install-nats.sh --path)"; \
	CHAOS_FAULTS=$(FAULTS) MUSTER_NATS_SERVER="$$nats" PATH="$$(dirname "$$nats"):$$PATH" \
	$(CARGO) test -p muster-tests --test chaos nemesis_writes_the_reliability_report -- --include-ignored --nocapture

# Container images for compose.yaml (docs/deploy.md), built locally with no registry: FROM scratch for nats-server and
# muster-server (+ the CLI), a debootstrapped Debian trixie base for the agent (made once). The deploy test builds
# the same images from the debug binaries instead.
.PHONY: images
images: tools
	$(CARGO) build --release -p muster-server -p muster-cli -p muster-agent
	scripts/images.sh --profile release

demo:
	scripts/demo.sh start

demo-stop:
	scripts/demo.sh stop

clean: demo-stop
	$(CARGO) clean
	rm -rf .demo

# cargo-fuzz targets for everything the network reaches (docs/fuzzing.md): cargo-fuzz into .tools/, its own target
# dir fuzz/target; FUZZ_SECONDS=N runs each target N seconds, FUZZ_TARGETS="a b" only those.
.PHONY: fuzz fuzz-ci
fuzz:
	scripts/fuzz.sh

fuzz-ci:
	scripts/fuzz.sh --ci

# Debian packages (docs/packages.md): cargo-deb, pinned, into .tools/ (crates come through cargo's own configuration),
# then one .deb per package from the release binaries into target/debian/. The systemd units, default configs and
# maintainer scripts are in packaging/; each crate's [package.metadata.deb] says what goes in. The tests
# (tests/tests/packages.rs) package the debug binaries of `make build` instead (`--no-build`).
CARGO_DEB_VERSION := 3.8.0
CARGO_DEB := $(CURDIR)/.tools/bin/cargo-deb

# dpkg-shlibdeps (dpkg-dev) is how cargo-deb finds a package's Depends (libc6); without it the packages depend on
# nothing.
cargo-deb:
	@command -v dpkg-shlibdeps >/dev/null 2>&1 || \
		{ apt-get -qq update && DEBIAN_FRONTEND=noninteractive apt-get -qq install -y dpkg-dev; }
	@"$(CARGO_DEB)" --version 2>/dev/null | grep -qx "cargo-deb $(CARGO_DEB_VERSION)" || \
		$(CARGO) install --root .tools cargo-deb --version "=$(CARGO_DEB_VERSION)" --locked

# --dbgsym: the binaries go stripped (the agent's 37 MB, line tables of `debug = 1` included, become 6 MB), and their
# debug info into a -dbgsym .ddeb beside each, as Debian's own packages do, to install where a backtrace needs it.
deb: cargo-deb
	$(CARGO) build --release -p muster-server -p muster-cli -p muster-agent
	for p in muster-server muster-cli muster-agent; do "$(CARGO_DEB)" -p "$$p" --no-build --dbgsym; done
	ls -l target/debian/*.deb target/debian/*.ddeb
