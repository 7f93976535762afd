# Certbus: `make run` starts the whole system, `make test` runs every check. Both install what
# they need into .venv first (pinned by constraints.txt), on a machine where nothing else was installed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run test unit lint format bench profile faults soak soak-chart docs clean chromium compose acme-clients cfssl wrk softhsm

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# `make run CLUSTER=3`: a three-node NATS cluster with the log replicated on each node, and two
# replicas of every service (REPLICAS=N to choose).
CLUSTER  ?=
REPLICAS ?=

# `CERTBUS_CA_KEYSTORE=pkcs11 make run`: signing's CA keys in a SoftHSM2 token made under .certbus/softhsm
# (docs/hsm.md), unless CERTBUS_CA_PKCS11_TOKEN_LABEL or _SLOT names one. `CERTBUS_CA_ROOT=offline make run`:
# a root signing never holds, made and used by the offline root's ceremony, played locally under
# .certbus/ceremony with a SoftHSM2 store of its own (development only: deploy/local/ceremony.py).
run: install $(if $(filter pkcs11,$(CERTBUS_CA_KEYSTORE))$(filter offline,$(CERTBUS_CA_ROOT)),softhsm)
	CERTBUS_CLUSTER=$(CLUSTER) CERTBUS_REPLICAS=$(REPLICAS) $(PY) -m deploy.local.devstack

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy shared services deploy
	$(VENV)/bin/lint-imports

test: lint chromium compose acme-clients softhsm
	$(PY) -m pytest -q -p no:cacheprovider

# The HTML audit report's test opens the page in headless Chromium (Debian's package).
chromium:
	@command -v chromium >/dev/null || ($(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)

# tests/unit/test_compose.py validates docker-compose.yml with `docker-compose config` (Debian's
# package; no Docker engine is needed for it, so its recommended docker.io is not installed).
compose:
	@command -v docker-compose >/dev/null || ($(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker-compose)

# The PKCS#11 CA key store's tests make throwaway tokens in SoftHSM2 (Debian's softhsm2: the module
# /usr/lib/softhsm/libsofthsm2.so and softhsm2-util).
softhsm:
	@command -v softhsm2-util >/dev/null || ($(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends softhsm2)

# ACME's tests run real clients against it: certbot and lego (Debian's packages).
acme-clients:
	@(command -v certbot >/dev/null && command -v lego >/dev/null) || ($(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends certbot lego)

unit: install
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

docs: install
	$(PY) -m docs.asyncapi

# The issuance bench's outside reference: `cfssl serve` (Debian's golang-cfssl) driven by wrk.
cfssl:
	@command -v cfssl >/dev/null || ($(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-cfssl)

wrk:
	@command -v wrk >/dev/null || ($(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk)

bench: install cfssl wrk softhsm
	$(PY) -m bench.issuance
	$(PY) -m bench.floor
	$(PY) -m bench.audit
	$(PY) -m bench.revocation
	$(PY) -m bench.renewal
	$(PY) -m bench.cli_startup
	$(PY) -m bench.hsm
	$(PY) -m bench.summary

# Where each service spends its CPU during an issuance burst (py-spy); summaries to bench/results/profile-*.txt.
profile: install
	$(PY) -m bench.profile

# The fault suite in cluster mode: 10,000 enrollments per scenario (FAULTS_N=300 for a quick run);
# figures go to bench/results/faults.json.
FAULTS_N ?= 10000
faults: install
	CERTBUS_FAULTS_N=$(FAULTS_N) CERTBUS_FAULTS_RESULTS=bench/results/faults.json \
		$(PY) -m pytest -q -p no:cacheprovider -s tests/faults

# 30 minutes at half the measured capacity in cluster mode; samples to bench/results/soak.json.
SOAK_MINUTES ?= 30
soak: install
	$(PY) -m bench.soak --minutes $(SOAK_MINUTES) --out bench/results/soak.json

# The soak's samples as charts (memory per process, p50/p99 latency): one page, no script, nothing fetched.
# Works on a soak still running (its file is rewritten at every sample).
soak-chart: install
	$(PY) -m bench.soak_chart bench/results/soak.json --out bench/results/soak.html

clean:
	rm -rf .certbus build *.egg-info .pytest_cache .mypy_cache .ruff_cache
