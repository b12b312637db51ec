# paddock — build, lint, test, demo. Every target that needs system packages
# depends on `deps`, which installs them once (Debian 12, as root).
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/paddock-vm/paddock/version.Version=$(VERSION)
GOBIN := $(shell $(GO) env GOPATH)/bin
# Guest kernel and built images are cached here between runs.
export PADDOCK_TEST_CACHE ?= $(HOME)/.cache/paddock-test
# Debian's guest kernel, unpacked (apt-get download + dpkg -x), for boot tests.
export PADDOCK_KERNEL_DIR ?= $(PADDOCK_TEST_CACHE)/kernel
TEST_TIMEOUT ?= 40m

.PHONY: all deps kernel build test unit e2e lint lint-go lint-shell bench demo stress deb deb-check clean

all: build

deps:
	@.ci/deps.sh

kernel: deps
	@.ci/fetch-kernel.sh $(PADDOCK_KERNEL_DIR) >/dev/null

build:
	@mkdir -p bin
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ ./cmd/paddockd ./cmd/paddock
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w $(LDFLAGS)' -o bin/ ./cmd/paddock-agent

# Every test: unit, integration (root: namespaces, systemd tools) and e2e.
# One package at a time: several packages boot VMs under TCG, and two cores
# shared between them make boots slow enough to hit deadlines.
test: deps kernel build
	$(GO) test -race -count=1 -p 1 -timeout $(TEST_TIMEOUT) ./...

# Unit tests only: -short skips every test that needs root or boots a VM
# (internal/testenv), so this runs anywhere, as any user, in a few minutes.
unit:
	$(GO) test -count=1 -short ./...

# The end-to-end suite; the smoke scenarios print "PASS name" / "FAIL name: reason".
e2e: deps kernel build
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v ./e2e/... 2>&1 | grep -E '^(PASS|FAIL)( |$$)|^--- (PASS|FAIL)|^(ok|FAIL)[[:space:]]|^smoke|^panic|_test.go:' ; exit $${PIPESTATUS[0]}

lint: lint-go lint-shell

lint-go: deps
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GOBIN)/staticcheck ./...

lint-shell: deps
	shellcheck $$(git ls-files '*.sh' .ci/run)

# Every figure is printed as a ratio to a reference measured in the same run.
MINBASE := $(PADDOCK_TEST_CACHE)/bench/bookworm-minbase.tar
BENCH := $(GO) test -run '^$$' -benchtime
bench: deps kernel build
	@.ci/minbase.sh $(MINBASE)
	@echo "== API, records, D-Bus signals, workspaces, image import (ratios to a raw socket round trip, the idle daemon, the varlink event, mkfs.ext4 -d and tar -c of the tree, tar -x + mkfs.ext4 -d)"
	PADDOCK_BENCH_MINBASE=$(MINBASE) $(GO) run ./bench
	@echo "== ext4 base build from the flattened minbase image (x-ref: / tar -x + mkfs.ext4 -d)"
	PADDOCK_BENCH_ROOTFS_TAR=$(MINBASE) $(BENCH) 3x -bench Build ./imaging/ext4
	@echo "== VM start as a user waits on it: paddock run -> first exec answered, start after stop, paddock's own overhead API -> hello, the phase reports (x bare: / a bare QEMU of the same kit and disk to agent hello)"
	PADDOCK_BENCH_MINBASE=$(MINBASE) $(GO) run ./bench -start
	@echo "== guest boot: QEMU start -> agent hello, / a bare kernel whose /init powers off (median of 5)"
	$(BENCH) 5x -bench Boot ./bootkit/qemurun
	@echo "== VMM driver start -> agent hello, / bare QEMU boot to the same point"
	$(BENCH) 5x -bench StartToHello ./host/vmm/qemu
	@echo "== per-VM disk clone per backend (x-ref: / cp --sparse=always of the base)"
	$(BENCH) 5x -bench Create ./host/disk
	@echo "== tap acquire+release (x-ref: / create+delete a plain link)"
	$(BENCH) 20x -bench AcquireReleaseTap ./host/netdev
	@echo "== stats poll: daemon CPU per VM per poll over 50 in-process agents (x-ping: / one agent ping)"
	$(BENCH) 20x -bench StatsPoll ./actors
	@echo "== ports scan: classifying one port (x-connect: / a plain TCP connect)"
	$(BENCH) 20x -bench Classify ./host/probe
	@echo "== VM network: guest TCP throughput out through NAT and through a published port, bridge (root paddockd) and passt (paddockd with no capability) (x veth: / the same transfer over a plain veth pair; x guest->gateway|daemon ns: / the guest straight to its host side, no NAT)"
	$(GO) run ./bench -net

demo: deps kernel build
	.ci/demo.sh

# N back-to-back run/rm cycles under a CPU hog on every core; any hang fails.
STRESS_CYCLES ?= 50
stress: deps kernel build
	.ci/stress-run.sh $(STRESS_CYCLES)

# The Debian package, dist/paddock_<version>-1_amd64.deb (nfpm, pinned in
# packaging/deb/build.sh); deb-check runs lintian on it: no errors allowed,
# overrides only with a reason (packaging/deb/lintian-overrides).
deb:
	VERSION='$(VERSION)' GO='$(GO)' packaging/deb/build.sh

deb-check: deps
	@deb=$$(ls -t dist/paddock_*_amd64.deb 2>/dev/null | head -1); \
	if [ -z "$$deb" ]; then echo "deb-check: no dist/paddock_*_amd64.deb (make deb first)"; exit 1; fi; \
	echo "lintian $$deb"; \
	out=$$(lintian --display-info --show-overrides --tag-display-limit 0 "$$deb" 2>&1); rc=$$?; \
	echo "$$out"; \
	echo "deb-check: $$(grep -c '^E:' <<<"$$out") errors, $$(grep -c '^W:' <<<"$$out") warnings, $$(grep -c '^I:' <<<"$$out") info, $$(grep -c '^O:' <<<"$$out") overridden"; \
	if grep -q '^E:' <<<"$$out" || [ $$rc -gt 2 ]; then echo "deb-check: FAIL (lintian exit $$rc)"; exit 1; fi

clean:
	rm -rf bin dist
