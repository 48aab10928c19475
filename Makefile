# HopGate build, test and demo targets. `make demo` and `make test` are the two commands of the README.
GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X github.com/hopgate/hopgate/internal/version.Version=$(VERSION)
export CGO_ENABLED ?= 0

.PHONY: build test test-short lint generate demo bench clean

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ ./cmd/hopgate-server ./cmd/hopgate-client

# The race detector needs cgo; the binaries themselves are built with CGO_ENABLED=0 by the e2e tests.
test:
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 9m ./...

test-short:
	CGO_ENABLED=1 $(GO) test -short -count=1 ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...


generate:
	cd proto && $(GO) tool buf lint && $(GO) tool buf generate
	$(GO) generate ./ent

demo:
	./scripts/demo.sh

clean:
	rm -rf bin data .demo

# Renders every error page in headless chromium, light and dark, and checks the screenshots' colours
# and the DOM (status and both languages). Installs Debian's chromium and the Korean fonts when
# missing (needs root). Screenshots go to $HOP_SCREENSHOT_DIR, or a temporary directory.
.PHONY: browser-test
browser-test:
	command -v chromium || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium fonts-noto-cjk)
	fc-list :lang=ko | grep -q . || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y fonts-noto-cjk)
	HOP_BROWSER_TESTS=1 $(GO) test -count=1 -timeout 9m -run '^TestBrowser$$' -v ./internal/gateway/errorpage/

# Measures HopGate against the origin and a plain httputil.ReverseProxy (issue 8); see bench/README.md.
# `bench` is the quick profile (under 5 minutes on 2 cores), `bench-full` the issue's sizes (S9 included).
.PHONY: bench-full
bench: build
	$(GO) run ./bench -profile quick

bench-full: build
	$(GO) run ./bench -profile full

# Runs every fuzz target for FUZZTIME each, one after another (`make test` runs their seeds only).
# New corpus entries land in the Go build cache; copy the interesting ones into testdata/fuzz.
FUZZTIME ?= 30s
.PHONY: fuzz
fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzSessionFrames$$' -fuzztime=$(FUZZTIME) ./internal/tunnel
	$(GO) test -run='^$$' -fuzz='^FuzzCodecUnmarshal$$' -fuzztime=$(FUZZTIME) ./internal/tunnel
	$(GO) test -run='^$$' -fuzz='^FuzzHeaderMapping$$' -fuzztime=$(FUZZTIME) ./internal/tunnel/httpwire
	$(GO) test -run='^$$' -fuzz='^FuzzCanonical$$' -fuzztime=$(FUZZTIME) ./internal/gateway/hostname
	$(GO) test -run='^$$' -fuzz='^FuzzLoadServer$$' -fuzztime=$(FUZZTIME) ./internal/config
	$(GO) test -run='^$$' -fuzz='^FuzzLoadClient$$' -fuzztime=$(FUZZTIME) ./internal/config
	$(GO) test -run='^$$' -fuzz='^FuzzAdminBodies$$' -fuzztime=$(FUZZTIME) ./internal/gateway/admin
	$(GO) test -run='^$$' -fuzz='^FuzzParser$$' -fuzztime=$(FUZZTIME) ./internal/gateway/h1guard
	$(GO) test -run='^$$' -fuzz='^FuzzParser$$' -fuzztime=$(FUZZTIME) ./internal/gateway/h2guard
