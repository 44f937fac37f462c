# haagent — every target installs what it needs by itself and can be run again.
# Needs root for the lab (network namespaces) and for apt.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
APT_PACKAGES := etcd-server etcd-client iproute2 nftables debootstrap systemd systemd-container util-linux libcap2-bin prometheus
PYTEST_ARGS ?=

.PHONY: help deps system-deps venv lint typecheck unit test demo lab-clean clean

help:
	@echo "make demo   - build a 3-host lab, show a VIP fail over, tear it down (DEMO_ARGS=--keep to leave it up)"
	@echo "make test   - lint, type-check and run the whole test suite (unit + lab, needs root)"
	@echo "make unit   - only the fast unit tests (no root needed)"
	@echo "make lab-clean - remove every leftover lab namespace and process"
	@echo "make bench  - haagent vs keepalived failover benchmark, ~25 min (BENCH_ARGS=--quick: a few minutes); docs/benchmarks.md"
	@echo "make soak   - randomized fault run (Jepsen style), 10 min of faults (SOAK_ARGS=\"--minutes 5 --seed N\"); docs/safety.md"
	@echo "make bench-scale - 10/200/1000 VIPs on 5 hosts: cold start, RSS, CPU, idle, mass failover, ~20 min (SCALE_ARGS=--quick: 2-5 min); docs/benchmarks.md"

deps: system-deps venv

# apt only when something is missing, so repeated runs are fast and offline-friendly.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# The same trees mypy checks (pyproject.toml: haagent, tests, bench).
lint: venv
	$(VENV)/bin/ruff check haagent tests bench
	$(VENV)/bin/ruff format --check haagent tests bench

typecheck: venv
	$(VENV)/bin/mypy

unit: venv
	$(VENV)/bin/pytest -q tests/unit $(PYTEST_ARGS)

# pytest exits 5 when it collected no test: a broken suite, never a pass.
test: deps lint typecheck
	@rc=0; $(VENV)/bin/pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

demo: deps
	$(PY) -m haagent.lab.demo $(DEMO_ARGS)

lab-clean: venv
	$(PY) -m haagent lab down --all

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info

# Not part of `make test`. Installs Debian's keepalived and matplotlib (the optional `bench`
# extra) if missing, runs every failure mode against haagent and keepalived in the lab, and
# copies the picture to docs/img/failover.png. Results: bench-results/ (git-ignored).
.PHONY: bench
BENCH_ARGS ?=
bench: deps
	@dpkg-query -W -f='$${Status}' keepalived 2>/dev/null | grep -q "install ok installed" || { \
	  echo "installing: keepalived"; apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends keepalived; }
	@$(PY) -c "import matplotlib" 2>/dev/null || $(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench $(BENCH_ARGS)
	@if [ -f bench-results/failover-latest.png ]; then mkdir -p docs/img && \
	  cp bench-results/failover-latest.png docs/img/failover.png && echo "picture: docs/img/failover.png"; fi

# Not part of `make test`. haagent alone with many VIPs (bench/scale.py): cold start, agent and
# fence footprint, idle CPU / etcd load / frames, mass failover of the busiest host. Needs
# only what `make test` installs. Results: bench-results/scale-<stamp>.json (git-ignored).
.PHONY: bench-scale
SCALE_ARGS ?=
bench-scale: deps
	$(PY) -m bench.scale $(SCALE_ARGS)

# Not part of `make test` (a 75 s version is: tests/lab/test_soak.py). A seeded nemesis against
# a 3-host, 3-member-etcd lab, judged over the whole run (haagent/lab/soak.py). Exit 1 with the
# seed and the replay command when a verdict fails. Results: bench-results/soak-<stamp>.json.
.PHONY: soak
SOAK_ARGS ?=
soak: deps
	@mkdir -p bench-results
	$(PY) -m haagent.lab.soak --out bench-results/soak-$$(date -u +%Y%m%dT%H%M%SZ).json $(SOAK_ARGS)

# Only tests/deploy: ansible-lint, then the roles applied to three booted Debian roots
# (systemd-nspawn, debootstrap image cached in /var/cache/haagent-deploy-test). ~3 min.
.PHONY: test-deploy
test-deploy: deps
	$(VENV)/bin/pytest -s tests/deploy $(PYTEST_ARGS)
