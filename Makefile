# gsender-bcc: `sudo make run` shows it working, `sudo make test` proves it.
VENV := .venv
PYTEST := $(VENV)/bin/python -m pytest
FREQUENCY ?= 5

.PHONY: setup run test test-unit test-bpf clean

setup:
	@scripts/setup-host.sh

run: setup
	$(VENV)/bin/gsender-bcc --stdout --frequency $(FREQUENCY)

test: setup
	$(PYTEST) tests

test-unit: setup
	$(PYTEST) -m "not bpf" tests

test-bpf: setup
	$(PYTEST) -m bpf tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
