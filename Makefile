# avatar-forge: the two commands of the README live here.
#   make demo   run the main job on the bundled sample photos
#   make test   install what the tests need and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export ANNY_CACHE_DIR ?= $(HOME)/.cache/anny
export HF_HUB_OFFLINE := 1
export RAY_AUTH_MODE := disabled
# Ray binds every interface: run anything that may start Ray in a namespace with only loopback.
LOOPBACK := unshare -n sh -c 'ip link set lo up; exec "$$0" "$$@"'

.PHONY: setup demo test test-all gpu-check

$(VENV)/.installed: pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints/cpu.txt -e '.[test]'
	touch $@

# Debian's Prometheus for the metrics test: the binary only (no service started), in the venv.
$(VENV)/prometheus/.fetched: $(VENV)/.installed
	mkdir -p $(VENV)/prometheus
	cd $(VENV)/prometheus && { apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get download prometheus >/dev/null 2>&1; }; } \
	  && dpkg -x prometheus_*.deb root && ln -sf root/usr/bin/prometheus prometheus \
	  || echo "warning: could not fetch Debian's prometheus package; the Prometheus test will be skipped"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(LOOPBACK) $(VENV)/bin/avatar-forge batch samples out/demo
	@echo "results: $(CURDIR)/out/demo (avatars/<id>/, manifest/manifest.parquet, summary.json)"

test: setup $(VENV)/prometheus/.fetched
	$(LOOPBACK) $(VENV)/bin/pytest -q

test-all: setup $(VENV)/prometheus/.fetched
	$(LOOPBACK) $(VENV)/bin/pytest -q -m ''

# Every CUDA path once, within 8 minutes, as one JSON object (exits 0 saying so without CUDA).
gpu-check:
	bash bench/gpu_check.sh
