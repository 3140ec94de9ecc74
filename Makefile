# pinrelay: `make run` starts a relay, `make test` runs every check.
# Everything is installed into .venv from constraints.txt (pinned), so a fresh
# machine gets what CI got.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATA   ?= data
# More flags for `make run`'s `pinrelay serve`, e.g. ARGS="--port 7790 --link-port 7791".
ARGS   ?=
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`: the suite mostly waits on timers and processes
# (DECISIONS 65); a module's tests stay on one worker (its shared relay, its cluster).
# Each run lists its 20 slowest tests: the suite is kept under 20 minutes here.
TEST_WORKERS ?= 2

.PHONY: install browser run test lint types pytest bench bench-peers soak chaos fuzz format clean lock

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/pinrelay serve --data $(DATA) $(ARGS)

test: install lint types pytest

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

types: install
	$(VENV)/bin/mypy

pytest: install browser
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=20 $(PYTEST_ARGS)

# The browser tests (tests/web) drive Debian's chromium with Playwright, which cannot
# download its own browsers here; installed when missing, as bench does mosquitto.
browser:
	@{ command -v chromium && dpkg -s fonts-liberation; } >/dev/null 2>&1 || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  --no-install-recommends chromium fonts-liberation >/dev/null; }

format: install
	$(VENV)/bin/ruff check --fix src tests bench
	$(VENV)/bin/ruff format src tests bench

# Benchmarks install their peers (Mosquitto, Prosody with its SQLite driver) from
# Debian's packages when missing; `make bench-peers` alone before one benchmark.
bench: bench-peers
	$(PY) -m bench.run_all

bench-peers: install
	@command -v mosquitto >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	  mosquitto mosquitto-clients >/dev/null; }
	@{ command -v prosody >/dev/null 2>&1 && dpkg -s lua-dbi-sqlite3 >/dev/null 2>&1; } || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  --no-install-recommends prosody lua-dbi-sqlite3 >/dev/null; }

# Long soaks and storms, kept out of `make test`.
soak: install
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

# The HTTP bad-input battery, the link frame fuzzer and schemathesis, much longer than
# in `make test` (20,000 examples each, random seeds; about 30 minutes).
FUZZ_EXAMPLES ?= 20000
fuzz: install
	PINRELAY_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) PINRELAY_FUZZ_RANDOM=1 \
	PINRELAY_SCHEMATHESIS_EXAMPLES=2000 \
	$(PY) -m pytest -q -o timeout=7200 \
	  tests/api/test_fuzz_http.py tests/link/test_fuzz_link.py tests/api/test_schemathesis.py $(PYTEST_ARGS)

# Ten minutes of relays and NATS nodes killed at random under load (issue 5).
chaos: install
	$(PY) -m pytest -q -m chaos $(PYTEST_ARGS)

# Refresh the pins after changing dependencies in pyproject.toml.
lock: install
	$(PY) -m pip freeze --exclude-editable | grep -v '^pinrelay' > constraints.txt

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
