# gsender-bcc: `sudo make run` shows it working, `sudo make test` proves it.
VENV := .venv
PYTEST := $(VENV)/bin/python -m pytest
FREQUENCY ?= 5
GRAPHITE_PORT ?= 2003
GRAPHITE_WEB_PORT ?= 8080

VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' gsender_bcc/__init__.py)
# `make deb DEB_VERSION=0.1.0+1 DEB_DIR=build/next` builds the same tree as another package
# version (a changelog entry added to the build's copy only), for upgrade tests.
DEB_VERSION ?= $(VERSION)
DEB_DIR ?= build
DEB := $(DEB_DIR)/gsender-bcc_$(DEB_VERSION)_all.deb
RPM_DIR ?= build/rpm
RPM := $(RPM_DIR)/gsender-bcc-$(VERSION)-1.noarch.rpm
# graphyte is not packaged by Debian: the .deb carries this pinned copy (see debian/copyright).
GRAPHYTE_VERSION := 1.7.1
GRAPHYTE_SHA256 := 5c6061f32375ea9de8cccd78b259c928670fbabcf6fd4ddbf160e77124289be2
DEB_BUILD_DEPS := dpkg-dev debhelper dh-python python3-all python3-setuptools python3-wheel \
	pybuild-plugin-pyproject lintian fakeroot

.PHONY: setup run docs-graph settings-docs lint test test-unit test-bpf test-package test-vm bench deb rpm install \
	uninstall wheelhouse clean

setup:
	@scripts/setup-host.sh

# Sends to Graphite on 127.0.0.1:$(GRAPHITE_PORT); if nothing listens there, a throwaway
# carbon-cache under var/ takes the data, and a throwaway graphite-web beside it on
# 127.0.0.1:$(GRAPHITE_WEB_PORT) (another port if taken) draws it: the graph's URL is printed.
# Interval summaries go to the terminal.
# The throwaway carbon-cache stores the series by the stanzas the agent prints for the same
# flags (`--carbon-config`, in var/carbon-storage.conf); files made by an earlier run keep theirs.
RUN_AGENT = $(VENV)/bin/gsender-bcc --config /dev/null --frequency $(FREQUENCY) \
	--graphite-host 127.0.0.1 --graphite-port $(GRAPHITE_PORT) --state-directory $(CURDIR)/var/state
run: setup
	mkdir -p var && $(RUN_AGENT) --carbon-config > var/carbon-storage.conf
	$(VENV)/bin/python scripts/local_carbon.py run var/carbon $(GRAPHITE_PORT) \
		--web-port $(GRAPHITE_WEB_PORT) --carbon-config var/carbon-storage.conf -- $(RUN_AGENT)

# docs/graph.png: graphite-web's render of a 150 s run of the agent at frequency 1 against a
# throwaway carbon-cache (build/graph-run), with every CPU busy from 60 s to 100 s.
docs-graph: setup
	$(VENV)/bin/python scripts/local_carbon.py record docs/graph.png --seconds 150 \
		--busy-from 60 --busy-for 40 -- \
		$(VENV)/bin/gsender-bcc --config /dev/null --frequency 1 --prefix web-01.cpu-lat \
		--graphite-host 127.0.0.1 --graphite-port {port} --state-directory $(CURDIR)/build/graph-run/state

# packaging/gsender.conf, the man page's list of settings and the README's table, rewritten from
# the settings' declarations (gsender_bcc/config.py), and the figures tables of docs/ from the
# code; tests/test_settings.py and tests/test_claims.py fail while one is stale.
settings-docs:
	$(VENV)/bin/python scripts/settings_docs.py write
	$(VENV)/bin/python scripts/docs_figures.py write

# ruff, with the settings in pyproject.toml; `make test` runs it first.
lint: setup
	$(VENV)/bin/ruff check .

test: setup lint
	$(PYTEST) tests

test-unit: setup
	$(PYTEST) -m "not bpf" tests

test-bpf: setup
	$(PYTEST) -m "bpf and not package and not vm" tests

test-package: setup
	$(PYTEST) -m package tests

# Boots Debian bullseye, bookworm and trixie under qemu, each with the .deb installed, and checks
# the service there (tests/vm/); and the operator guest (bookworm-operator): the original gsender
# replaced, an upgrade, remove and purge. RELEASES="bookworm trixie" boots only those.
test-vm: setup
	GSENDER_VM_RELEASES="$(RELEASES)" $(PYTEST) -m vm tests/test_vm.py

# Cost of gsender-bcc, host-only and default, beside empty programs, the original bpftrace tracer
# and bcc's runqlat; about 20 minutes on 2 cores; records docs/benchmarks.md. It holds
# /tmp/gsender-heavy.lock so that no test or VM shares the machine while it times.
BENCH_ARGS ?=
# bcc's runqlat, a peer, needs kernel headers: bench/peer-headers.sh links the distro's for the
# bench's duration only (gsender-bcc needs none).
bench: setup
	@scripts/setup-host.sh bpftrace bpfcc-tools systemd
	@bench/peer-headers.sh link
	flock /tmp/gsender-heavy.lock $(VENV)/bin/python bench/run.py --record $(BENCH_ARGS); \
		status=$$?; bench/peer-headers.sh unlink; exit $$status

GRAPHYTE_SDIST := build/graphyte/graphyte-$(GRAPHYTE_VERSION).tar.gz
# Also the wheelhouse of an offline `make install` (WHEELHOUSE=build/graphyte).
$(GRAPHYTE_SDIST):
	rm -rf build/graphyte && mkdir -p build/graphyte
	$(VENV)/bin/python -m pip download -q --no-deps --no-binary :all: \
		"graphyte==$(GRAPHYTE_VERSION)" -d build/graphyte
	echo "$(GRAPHYTE_SHA256)  $@" | sha256sum -c --quiet

wheelhouse: $(GRAPHYTE_SDIST)

packaging/vendor/graphyte.py: $(GRAPHYTE_SDIST)
	mkdir -p packaging/vendor
	tar -xzf $(GRAPHYTE_SDIST) -C build/graphyte
	cp build/graphyte/graphyte-$(GRAPHYTE_VERSION)/graphyte.py $@
	printf '"""graphyte $(GRAPHYTE_VERSION), a private copy shipped with the package."""\n' \
		> packaging/vendor/__init__.py

# gsender-bcc_<version>_all.deb in build/, checked by lintian (errors and warnings fail).
deb: setup packaging/vendor/graphyte.py
	@scripts/setup-host.sh $(DEB_BUILD_DEPS)
	rm -rf build/deb && mkdir -p build/deb/src
	git ls-files -z | xargs -0 cp --parents -t build/deb/src
	mkdir -p build/deb/src/packaging && cp -r packaging/vendor build/deb/src/packaging/
	cp -rL packaging/debian build/deb/src/debian
	[ "$(DEB_VERSION)" = "$(VERSION)" ] || { \
		printf 'gsender-bcc (%s) unstable; urgency=medium\n\n  * Rebuilt as %s for upgrade tests.\n\n -- %s  %s\n\n' \
			"$(DEB_VERSION)" "$(DEB_VERSION)" "$$(sed -n 's/^ -- \(.*>\)  .*/\1/p;T;q' packaging/debian/changelog)" \
			"$$(date -R)"; \
		cat packaging/debian/changelog; } > build/deb/src/debian/changelog
	# Debian's own Python, whatever else is first on PATH.
	cd build/deb/src && PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -b -us -uc --no-pre-clean
	mkdir -p $(DEB_DIR) && mv build/deb/gsender-bcc_$(DEB_VERSION)_all.deb $(DEB)
	PATH=/usr/sbin:/usr/bin:/sbin:/bin lintian --fail-on error,warning --display-info $(DEB)

# gsender-bcc-<version>-1.noarch.rpm in build/rpm/ from packaging/gsender-bcc.spec, checked by
# rpmlint (waivers, with reasons: packaging/rpm/gsender-bcc.rpmlintrc). Built here by Debian's
# rpmbuild: --nodeps, as its rpm database knows no Fedora BuildRequires, and, where Fedora's
# systemd and python3 macros are missing, packaging/rpm/macros.debian-host.
rpm: packaging/vendor/graphyte.py
	@scripts/setup-host.sh rpm rpmlint
	rm -rf $(RPM_DIR) && mkdir -p $(RPM_DIR)/SOURCES
	{ git ls-files; find packaging/vendor -type f; } | tar -czf $(RPM_DIR)/SOURCES/gsender-bcc-$(VERSION).tar.gz \
		--transform 's|^|gsender-bcc-$(VERSION)/|' -T -
	PATH=/usr/sbin:/usr/bin:/sbin:/bin rpmbuild -bb --nodeps --define "_topdir $(CURDIR)/$(RPM_DIR)" \
		$$(rpm --eval '%{?systemd_post:fedora}' | grep -q fedora || echo --load packaging/rpm/macros.debian-host) \
		packaging/gsender-bcc.spec
	mv $(RPM_DIR)/RPMS/noarch/gsender-bcc-$(VERSION)-1.noarch.rpm $(RPM)
	PATH=/usr/sbin:/usr/bin:/sbin:/bin rpmlint -c packaging/rpm/rpmlint.toml -r packaging/rpm/gsender-bcc.rpmlintrc \
		packaging/gsender-bcc.spec $(RPM)

install:
	@scripts/install.sh install

uninstall:
	@scripts/install.sh uninstall

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache packaging/vendor
