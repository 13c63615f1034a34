# capturefleet — the two commands for a fresh machine:
#   make demo   local control plane + operator + demo fleet + a live agent into a filesystem archive
#   make test   every test, against a real control plane and real sink servers (what CI runs)
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/capturefleet/target

.PHONY: test demo demo-down cluster-up cluster-down crds
test:
	@scripts/test
demo:
	@scripts/demo
demo-down:
	@scripts/demo --down
cluster-up:
	@tests/cluster/up
cluster-down:
	@tests/cluster/down
crds:
	cargo run --quiet -- crd > crds/capturefleet.dev.yaml
	cp crds/capturefleet.dev.yaml charts/capturefleet/files/crds/capturefleet.dev.yaml
	cargo run --quiet -- crd --reference > docs/crd-reference.md
