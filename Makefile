# HopGate build, test and demo targets. `make demo` and `make test` are the two commands of the README.
GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X github.com/hopgate/hopgate/internal/version.Version=$(VERSION)
export CGO_ENABLED ?= 0

.PHONY: build test test-short lint generate demo bench clean images container-test

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ ./cmd/hopgate-server ./cmd/hopgate-client ./cmd/hopgate-demo-target

# The race detector needs cgo; the binaries themselves are built with CGO_ENABLED=0 by the e2e tests.
# When HOP_TEST_DB_DSN is unset and nothing answers at TEST_PG_PROBE, the tests get a throwaway
# PostgreSQL from Debian's package (scripts/test-postgres). GOTEST_PKGS narrows the run.
TEST_PG_PROBE ?= 127.0.0.1:5432
GOTEST_PKGS   ?= ./...
test:
	CGO_ENABLED=1 TEST_PG_PROBE=$(TEST_PG_PROBE) ./scripts/test-postgres run -- \
		$(GO) test -race -count=1 -timeout 9m $(GOTEST_PKGS)

test-short:
	CGO_ENABLED=1 $(GO) test -short -count=1 ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...
	@# go.mod and go.sum must be what `go mod tidy` makes of the imports; the diff says what to run.
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum not tidy: run go mod tidy"; exit 1; }


generate:
	cd proto && $(GO) tool buf lint && $(GO) tool buf generate
	$(GO) generate ./ent

demo:
	./scripts/demo.sh

clean:
	rm -rf bin data .demo dist

# Container images: hopgate-server, hopgate-client and hopgate-demo-target, tagged :latest and
# :$(VERSION). The static binaries are built here into dist/image/linux-$(GOARCH)/ (the build context),
# so the images are FROM scratch and need no base image from a registry. ENGINE is podman or docker.
# A docker CLI with no daemon behind it (common on CI machines) does not count.
ENGINE ?= $(shell command -v podman >/dev/null 2>&1 && echo podman || { docker info >/dev/null 2>&1 && echo docker; })
GOARCH ?= $(shell $(GO) env GOARCH)
IMAGE_CONTEXT := dist/image
images:
	@[ -n "$(ENGINE)" ] || { echo "make images: no container engine: install podman (apt-get install podman) or start docker's daemon, or set ENGINE"; exit 1; }
	rm -rf $(IMAGE_CONTEXT)
	install -d -m 0700 $(IMAGE_CONTEXT)/rootfs-server/data
	install -d -m 1777 $(IMAGE_CONTEXT)/rootfs-server/tmp $(IMAGE_CONTEXT)/rootfs-client/tmp
	GOOS=linux GOARCH=$(GOARCH) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(IMAGE_CONTEXT)/linux-$(GOARCH)/ \
		./cmd/hopgate-server ./cmd/hopgate-client ./cmd/hopgate-demo-target
	for name in server client demo-target; do \
		$(ENGINE) build $(if $(filter podman,$(ENGINE)),--format docker) --platform linux/$(GOARCH) \
			--build-arg VERSION=$(VERSION) -f Dockerfile.$$name \
			-t hopgate-$$name:latest -t hopgate-$$name:$(VERSION) $(IMAGE_CONTEXT) || exit 1; \
	done

# Builds the images with podman and runs deploy/compose.local.yaml with podman-compose, then sends a
# request through the tunnel (deploy/container_test.go). Installs podman and podman-compose with
# apt-get when missing (needs root).
container-test:
	command -v podman >/dev/null && command -v podman-compose >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman podman-compose >/dev/null)
	$(MAKE) images ENGINE=podman
	HOP_CONTAINER_TESTS=1 $(GO) test -count=1 -timeout 5m -run '^TestContainer' -v ./deploy/

# Renders every error page in headless chromium, light and dark, and checks the screenshots' colours
# and the DOM (status and both languages); then drives the web console through a real gateway and
# agent (sign-in with the key and through a real OpenID provider, register, live agents, inspector and
# replay, rotate, audit, Korean) and screenshots
# every page at 1280 px, 360 px and dark. Installs Debian's chromium and the Korean fonts when
# missing (needs root). Screenshots go to $HOP_SCREENSHOT_DIR, or a temporary directory.
.PHONY: browser-test
browser-test:
	command -v chromium || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium fonts-noto-cjk)
	fc-list :lang=ko | grep -q . || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y fonts-noto-cjk)
	HOP_BROWSER_TESTS=1 $(GO) test -count=1 -timeout 9m -run '^TestBrowser$$' -v ./internal/gateway/errorpage/
	HOP_BROWSER_TESTS=1 $(GO) test -count=1 -timeout 5m -run '^TestBrowser' ./internal/e2e/

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
	$(GO) test -run='^$$' -fuzz='^FuzzCanonicalDomain$$' -fuzztime=$(FUZZTIME) ./internal/gateway/hostname
	$(GO) test -run='^$$' -fuzz='^FuzzLoadServer$$' -fuzztime=$(FUZZTIME) ./internal/config
	$(GO) test -run='^$$' -fuzz='^FuzzLoadClient$$' -fuzztime=$(FUZZTIME) ./internal/config
	$(GO) test -run='^$$' -fuzz='^FuzzAdminBodies$$' -fuzztime=$(FUZZTIME) ./internal/gateway/admin
	$(GO) test -run='^$$' -fuzz='^FuzzParser$$' -fuzztime=$(FUZZTIME) ./internal/gateway/h1guard
	$(GO) test -run='^$$' -fuzz='^FuzzParser$$' -fuzztime=$(FUZZTIME) ./internal/gateway/h2guard
	$(GO) test -run='^$$' -fuzz='^FuzzParse$$' -fuzztime=$(FUZZTIME) ./internal/gateway/policy
	$(GO) test -run='^$$' -fuzz='^FuzzDecodeCookie$$' -fuzztime=$(FUZZTIME) ./internal/gateway/access/sso
