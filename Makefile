# waypost — the two commands: `make run` and `make test`.
CARGO ?= cargo

.PHONY: run test test-rust test-helm deps build release bench bench-tls bench-micro callgrind fuzz clean

## run: build, start three example upstreams in the file registry and waypost in front of them
run: release
	scripts/run-local.sh

release:
	$(CARGO) build --release --bin waypost --example upstream

build:
	$(CARGO) build --all-targets

## test: install what the tests need (apt, pip venv) when missing, then run every test
test: deps test-rust test-helm

deps:
	scripts/install-deps.sh

test-rust:
	$(CARGO) build --all-targets
	$(CARGO) test

test-helm:
	tests/helm/run.sh

## bench: the load harness against HAProxy, nginx and Envoy (it builds, installs its peers
## when missing and runs the balance micro benches itself); results in bench/RESULTS.md
bench:
	python3 bench/load/run.py

## bench-tls: HTTPS upstreams (keep-alive, and one handshake per request) beside HAProxy with
## `ssl verify required`, and unary gRPC over h2c beside Envoy and HAProxy in h2 mode (needs
## haproxy, wrk, openssl and h2load from nghttp2-client); raw runs in bench/tls-results.json
bench-tls:
	python3 bench/load/tls.py

bench-micro:
	$(CARGO) bench --bench balance --bench refresh

## callgrind: instructions per proxied request (noise-free; needs valgrind and apache2-utils)
callgrind:
	bench/callgrind.sh

## fuzz: each target of fuzz/ (the HTTP/1 request and response head parsers with the framing
## decision, the chunked decoder) under libFuzzer for FUZZ_SECONDS each — not part of `make test`.
## Stable Rust: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its sanitizer flags (-Zsanitizer=address).
## New inputs go to fuzz/corpus/ (not committed); fuzz/seeds/ holds the committed seeds; a crash
## lands in fuzz/artifacts/ and the run stops.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= request_head response_head chunked
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t && \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t fuzz/corpus/$$t fuzz/seeds/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -max_len=16384 || exit 1; \
	done

clean:
	$(CARGO) clean
