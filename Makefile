# The two commands of the README: `make demo` (main job) and `make test` (all tests).
# Both install missing system packages first (scripts/setup.sh, apt through sudo).

CARGO ?= cargo

.PHONY: demo test test-vm check fuzz transcript setup deb deb-test bench bench-quick bench-compare agent-static

setup:
	@scripts/setup.sh

## The simulated end-to-end demo: a real broker, real agents and the real udev helper
## against simulated Xen domains (xenchan-sim plays QEMU, udev and xenstore).
## Options: make demo DEMO_ARGS="--domains 10 --scenario reboot --keep"
DEMO_ARGS ?=
## It builds what `make test` builds (one build serves both: the first run takes longer,
## the tests then start at once) and runs target/debug/xenchan-sim.
demo: setup
	$(CARGO) build --locked -q --workspace --bins --tests
	"$${CARGO_TARGET_DIR:-target}/debug/xenchan-sim" demo $(DEMO_ARGS)

## Every test of the workspace (unit, property, integration, end-to-end).
test: setup
	$(CARGO) test --workspace --locked

## What CI checks besides the tests.
check: setup
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) check --locked --manifest-path fuzz/Cargo.toml

## The protocol's worked transcript (docs/PROTOCOL.md shows it).
transcript:
	$(CARGO) run --locked -q -p xenchan-protocol --example transcript

## Fuzz each parser for FUZZ_SECONDS (cargo install cargo-fuzz first). cargo-fuzz wants
## nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them.
FUZZ_SECONDS ?= 300
fuzz:
	cd fuzz && for t in decoder config xenstore_wire registry; do \
	  mkdir -p corpus/$$t && cp -n seeds/$$t/* corpus/$$t/ && \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run -O $$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

## Debian packages xenchan-broker (dom0) and xenchan-agent (guests) into target/debian/.
deb: setup
	command -v cargo-deb >/dev/null || $(CARGO) install cargo-deb --locked
	$(CARGO) xtask deb

## lintian, then install, start and purge the packages in a fresh Debian 12 chroot (root).
deb-test: deb
	packaging/test-install.sh

## The real-guest tier (root, QEMU TCG, no KVM needed): a Debian guest over virtio-serial
## and a real Xen 4.17 dom0 with a PV domU, the packages of `make deb` installed in them
## (docs/VMTEST.md). Images are cached in /var/cache/xenchan-vmtest. Options:
## make test-vm VMTEST_ARGS=virtio (or xen); XENCHAN_VMTEST_* variables (vmtest/run.sh --help).
VMTEST_ARGS ?=
test-vm: deb
	vmtest/run.sh $(VMTEST_ARGS)

## The guest agent daemon linked statically against musl, with the small `agent` profile
## and without libudev (only xenchan-agent-consoles needs it): 2.3 MiB idle RSS against
## 4.3 MiB for the dynamic --profile agent build (docs/PERFORMANCE.md, "Agent idle RSS"). Binary in
## target/x86_64-unknown-linux-musl/agent/. Needs: rustup target add x86_64-unknown-linux-musl
AGENT_TARGET ?= x86_64-unknown-linux-musl
agent-static:
	$(CARGO) build --locked --profile agent -p xenchan-agent --no-default-features \
	  --bin xenchan-agent --target $(AGENT_TARGET)

## Benchmarks (docs/PERFORMANCE.md): every figure as a table, JSON in target/. Run as root
## (network namespaces) on a quiet machine; apt-get install qemu-guest-agent for the
## comparison. bench-quick is the smaller set (N = 100, 1,000).
## (cargo runs a bench from its package folder: the JSON path is made absolute.)
bench: setup
	mkdir -p target
	$(CARGO) bench --locked -p xenchan-bench -- --json $(CURDIR)/target/bench.json
bench-quick: setup
	mkdir -p target
	$(CARGO) bench --locked -p xenchan-bench -- --quick --json $(CURDIR)/target/bench-quick.json

## Before and after in one run: BASE's release binaries (built in a git worktree under
## target/bench-base/) and this tree's, section by section, with a table of both medians
## and their ratio. make bench-compare BASE=main [BENCH_ARGS="--quick --only latency"]
BASE ?= main
BENCH_ARGS ?=
bench-compare: setup
	mkdir -p target
	scripts/bench-compare.sh $(BASE) $(BENCH_ARGS) --json $(CURDIR)/target/bench-compare.json
