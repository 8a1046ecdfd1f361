# goldvm developer targets. Everything runs from the repository root.
#
#   make test    the whole suite as CI runs it (deps, guest, vet, gofmt, go test)
#   make chaos   crash-at-every-step, fault and restart tests (real daemon, real QEMU)
#   make fuzz    every fuzz target for FUZZTIME each (default 60s)
#   make load    the load tests; prints a LOAD: line with req/s, p50/p99 and RSS
#   make bench   go benchmarks of every package, then the bench/*.sh scripts
#
# End-to-end tests want root (they run in their own network and mount
# namespaces) and the test guest: scripts/test.sh builds it, or point
# GOLDVM_TEST_GUEST at ~/.cache/goldvm/guest/guest.qcow2.

GO ?= go
FUZZTIME ?= 60s
E2E_TIMEOUT ?= 30m

.PHONY: test chaos fuzz load bench

test:
	bash scripts/test.sh

chaos:
	$(GO) test -count=1 -timeout $(E2E_TIMEOUT) -run 'Crash|Fault|Restart' -v ./e2e/

# One run per target (go test -fuzz takes one package and one target);
# scripts/fuzz.sh finds every func FuzzXxx in a _test.go file.
fuzz:
	FUZZTIME=$(FUZZTIME) bash scripts/fuzz.sh

load:
	$(GO) test -count=1 -timeout $(E2E_TIMEOUT) -run Load -v ./e2e/

bench:
	$(GO) test -run XXX -bench . ./...
	@set -e; for s in bench/*.sh; do \
		[ -e "$$s" ] || continue; \
		echo "== $$s"; bash "$$s"; \
	done
