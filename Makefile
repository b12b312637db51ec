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
TEST_TIMEOUT ?= 25m

.PHONY: all deps kernel build test unit e2e lint lint-go lint-shell bench demo clean

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
test: deps kernel build
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...

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

bench: deps kernel build
	@.ci/minbase.sh $(PADDOCK_TEST_CACHE)/bench/bookworm-minbase.tar
	PADDOCK_BENCH_MINBASE=$(PADDOCK_TEST_CACHE)/bench/bookworm-minbase.tar $(GO) run ./bench

demo: deps build
	.ci/demo.sh

clean:
	rm -rf bin
