# waypost — the two commands: `make run` and `make test`.
CARGO ?= cargo

.PHONY: run test test-rust test-helm deps build release bench bench-micro callgrind clean

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

bench-micro:
	$(CARGO) bench --bench balance --bench refresh

## callgrind: instructions per proxied request (noise-free; needs valgrind and apache2-utils)
callgrind:
	bench/callgrind.sh

clean:
	$(CARGO) clean
