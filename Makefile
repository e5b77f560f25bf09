# Two commands for a fresh machine (see README): `make demo` and `make test`.
# Each creates .venv if missing, installs torch==2.13.0 (the CPU build on this
# machine's disk) *before* the project, so that no CUDA build is ever pulled,
# then the project with its test extras.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bsoc-installed
export PYBAMM_DISABLE_TELEMETRY := true

.PHONY: demo test install chromium edge-tools clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Headless Chromium (Debian package) for the dashboard/report browser tests.
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "warning: could not install chromium; browser tests will be skipped"

# Debian toolchains that measure the exported C library (callgrind instructions, Cortex-M4
# flash/RAM, a QEMU MPS2 run); the tests that need them skip without.
EDGE_PACKAGES := valgrind gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm
edge-tools:
	@(command -v valgrind && command -v arm-none-eabi-gcc && command -v qemu-system-arm) >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(EDGE_PACKAGES) >/dev/null) || echo "warning: could not install $(EDGE_PACKAGES); edge deployment tests will be skipped"

demo: $(STAMP)
	$(BIN)/bsoc pipeline --profile quick

# pytest exits 5 when it collected no tests: that is a failure here, there must be tests.
test: $(STAMP) chromium edge-tools
	$(BIN)/python -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected" >&2; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) .pytest_cache
