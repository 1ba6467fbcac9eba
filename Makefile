# gsender-bcc: `sudo make run` shows it working, `sudo make test` proves it.
VENV := .venv
PYTEST := $(VENV)/bin/python -m pytest
FREQUENCY ?= 5
GRAPHITE_PORT ?= 2003

.PHONY: setup run test test-unit test-bpf clean

setup:
	@scripts/setup-host.sh

# Sends to Graphite on 127.0.0.1:$(GRAPHITE_PORT); if nothing listens there, a throwaway
# carbon-cache under var/ takes the data. Interval summaries go to the terminal.
run: setup
	$(VENV)/bin/python scripts/local_carbon.py run var/carbon $(GRAPHITE_PORT) -- \
		$(VENV)/bin/gsender-bcc --config /dev/null --frequency $(FREQUENCY) \
		--graphite-host 127.0.0.1 --graphite-port $(GRAPHITE_PORT) --state-directory $(CURDIR)/var/state

test: setup
	$(PYTEST) tests

test-unit: setup
	$(PYTEST) -m "not bpf" tests

test-bpf: setup
	$(PYTEST) -m bpf tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
