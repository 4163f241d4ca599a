# moonwall: the two commands of README.md, and their parts.
#   make run    set everything up, build, and serve the example site
#   make test   set everything up and run every check and test
.PHONY: run test setup build check-format lint unit-tests bench

CARGO ?= cargo

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --release --locked

run: build
	./target/release/moonwall serve --config examples/site/site.toml

check-format: setup
	$(CARGO) fmt --all -- --check

lint: setup
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

unit-tests: setup
	$(CARGO) test --locked --workspace

test: check-format lint unit-tests

bench: setup
	$(CARGO) bench --locked -p moonwall
