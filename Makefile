# medrelay — see README.md. Every target works on a clean clone with Go installed.
SHELL := /bin/bash
GO ?= go
BIN := bin
TOOLS := $(CURDIR)/bin/tools
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/medrelay/medrelay/internal/version.Version=$(VERSION) -X main.version=$(VERSION)
PKGS := ./...

# Pinned code generators (make proto, make check).
BUF_VERSION := v1.75.0
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2

.PHONY: all build run test check fmt vet lint race bench proto proto-drift tools package clean plugins sandbox

all: build

## build: the agent, the CLI, the sandbox and the plugins into bin/
build:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./agent/cmd/...
	@$(MAKE) --no-print-directory plugins

## plugins: every plugins/<name>/ with a main package (but the skeleton, a template for vendors), into bin/plugins/, each with its manifest (sha256)
plugins:
	@mkdir -p $(BIN)/plugins
	@for d in plugins/*/; do \
	  [ "$$(basename $$d)" = skeleton ] && continue; \
	  if grep -qs '^package main' $$d/main.go; then \
	    $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/plugins/medrelay-plugin-$$(basename $$d) ./$$d || exit 1; \
	    $(BIN)/plugins/medrelay-plugin-$$(basename $$d) manifest --write 2>/dev/null || exit 1; \
	  fi; \
	done

## run: build and start the agent in the foreground, state in ./.medrelay
run: build
	$(BIN)/medrelayd run --home .medrelay --plugin-dir $(BIN)/plugins

## test: what CI runs: formatting, vet, generated-code drift, import rules, all tests with the race detector
test: lint
	$(GO) test -race -count=1 -timeout 15m $(PKGS)
	@# The whole-corpus directory import skips itself under -race (minutes); run it plainly.
	$(GO) test -count=1 -run '^TestImportCatalogData$$' ./internal/directory/

## check: test, plus regenerating the protos with the pinned generators and diffing, plus go vet for
## the other OSes the agent ships for (per-OS files must all build; a cold cache adds minutes, so CI's
## `make test` leaves it out)
check: test proto-drift
	GOOS=windows $(GO) vet $(PKGS)
	GOOS=darwin $(GO) vet $(PKGS)

lint: fmt vet

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^proto/gen/')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

## bench: speed and memory goals, each against a baseline measured in the same run
bench:
	$(GO) test -tags bench -run '^TestBench' -count=1 -timeout 60m -v $(PKGS) | grep -E '^(BENCH|---|FAIL|ok|PASS)' || true

## bench-bulk: issue 7's goal: `medrelay sync` of a sandbox export of 1M resources end to end into a
## real agent's store vs downloading the same files raw (b/a, resources/s, agent peak RSS).
## BENCH_BULK_SIZES=1000000,5000000 measures both sizes (5M takes several minutes and ~5 GB of disk);
## MEDRELAY_TEST_AGENT_GOMEMLIMIT=150MiB runs the agent under that soft memory limit.
.PHONY: bench-bulk
bench-bulk:
	MEDRELAY_BENCH_BULK_SIZES=$(or $(BENCH_BULK_SIZES),1000000) $(GO) test -tags bench -run '^TestBenchBulk$$' -count=1 -timeout 120m -v ./internal/sync/ | grep -E '^(BENCH|---|FAIL|ok|PASS)' || true

## proto: regenerate proto/gen from proto/ with the pinned generators
proto: tools
	cd proto && PATH=$(TOOLS):$$PATH $(TOOLS)/buf lint && PATH=$(TOOLS):$$PATH $(TOOLS)/buf generate

## proto-drift: fail if proto/gen is not what `make proto` produces
proto-drift: tools
	@tmp=$$(mktemp -d); cp -r proto $$tmp/; \
	(cd $$tmp/proto && PATH=$(TOOLS):$$PATH $(TOOLS)/buf generate) && \
	diff -r proto/gen $$tmp/proto/gen && echo "proto/gen is up to date"; rc=$$?; rm -rf $$tmp; exit $$rc

tools: $(TOOLS)/buf $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc
$(TOOLS)/buf:
	GOBIN=$(TOOLS) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(TOOLS)/protoc-gen-go:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(TOOLS)/protoc-gen-go-grpc:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

## package: .deb and .rpm into dist/ (nfpm)
package: build
	VERSION=$(VERSION) $(GO) run ./packaging/cmd/mkpkg -out dist

clean:
	rm -rf $(BIN) dist
