# One-command set-up: `make repro` runs the pipeline, `make test` runs the test suite.
# Both create .venv and install pip + apt dependencies on a fresh machine first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
APT_PACKAGES := ffmpeg espeak-ng
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup apt-deps repro test test-fast lint lock help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

setup: apt-deps $(STAMP)  ## create .venv and install everything

apt-deps:  ## install Debian packages (ffmpeg, espeak-ng; tcmalloc for the benchmark's --heap) when missing
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi
	@# the asterisk audio source fetches Debian's sound packages with apt-get download: it needs the
	@# package lists, which container images often ship cleaned
	@if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then \
	  echo "apt package lists empty: apt-get update"; $(SUDO) apt-get update -q \
	  || echo "warning: apt-get update failed: the asterisk audio source may not fetch its packages"; \
	fi
	@# optional (benchmarks/speed.py --heap tcmalloc; its test skips without it); renamed ...t64 in Debian 13
	@if ! dpkg -s libtcmalloc-minimal4 >/dev/null 2>&1 && ! dpkg -s libtcmalloc-minimal4t64 >/dev/null 2>&1; then \
	  echo "installing libtcmalloc-minimal4 (optional)"; $(SUDO) apt-get update -q >/dev/null; \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q libtcmalloc-minimal4 \
	  || DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q libtcmalloc-minimal4t64 \
	  || echo "warning: tcmalloc not installed: speed.py --heap tcmalloc unavailable"; \
	fi

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	@# a venv that failed half-way (no ensurepip: Debian's python3.11-venv missing) has a python but no
	@# pip: start again rather than skip creating it on the next run
	@test -x $(BIN)/pip || { rm -rf $(VENV); $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "error: $(PYTHON) -m venv failed; on Debian/Ubuntu: apt-get install python3.11-venv"; exit 1; }; }
	# pip byte-compiles what it installs (73 of the 126 s of a fresh set-up). Keep it: with
	# PYTHONDONTWRITEBYTECODE=1 (common in containers, set on our machines) nothing would write the
	# .pyc files later, and every process would compile torch, whisper, mlflow and dvc from source
	# (importing them: 9 s instead of 4 s, in every stage and test process).
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: resolving it through another package could pull a CUDA build. Our machines'
	# pip config finds the CPU wheel; elsewhere PyPI's Linux torch is the CUDA build (several GB):
	# create the venv and run `.venv/bin/pip install torch==2.13.0 --index-url
	# https://download.pytorch.org/whl/cpu` first (this line then finds it installed).
	$(BIN)/pip install -q torch==2.13.0
	# within constraints.txt: the versions the tests last passed with (`make lock` renews them); pip
	# moves an installed package to its pinned version when the file changes
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

repro: setup  ## run the whole DVC pipeline on the embedded defaults
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# pytest-xdist workers (make test TEST_WORKERS=auto: one per core; 0: in this process). Two cut the
# suite's time on 2 cores by a third or more (README "Tests"): many tests wait on subprocesses (dvc,
# MLflow, stages).
# Tests sharing the repository's download cache run on one worker (xdist_group "repo-cache").
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

test: setup  ## run the whole test suite
	PATH="$(CURDIR)/$(BIN):$$PATH" $(PYTEST)

test-fast: setup  ## unit tests only (skip integration tests)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(PYTEST) -m "not integration"

lint: setup  ## ruff
	$(BIN)/ruff check src stages tests benchmarks
	$(BIN)/ruff format --check src stages tests benchmarks

LOCK_VENV := .venv-lock

lock:  ## re-resolve the newest releases into constraints.txt in a scratch venv (then make test, commit both)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found"; exit 1; }
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q --upgrade pip
	$(LOCK_VENV)/bin/pip install -q torch==2.13.0
	$(LOCK_VENV)/bin/pip install -q -e '.[dev]'
	@# the header stays; torch without its build label (+cpu here), so a CUDA host's 2.13.0 matches too;
	@# triton and nvidia-* left to torch: its CUDA build pins them (triton 3.7.1), the CPU build does not
	{ sed -n '/^#/p' constraints.txt; \
	  $(LOCK_VENV)/bin/pip freeze --exclude-editable | sed 's/^torch==\([^+]*\)+.*/torch==\1/' \
	  | grep -v -i -E '^(triton|nvidia-[a-z0-9-]+)=='; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt
	rm -rf $(LOCK_VENV)
	@echo "constraints.txt renewed: run make test, then commit it"
