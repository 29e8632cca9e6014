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

# Debian's Chromium for the viewer tests (Playwright drives it; no browser is downloaded). Without
# root or a package mirror the install fails and those tests skip, saying what is missing.
$(VENV)/chromium.checked: $(VENV)/.installed
	test -x /usr/bin/chromium \
	  || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
	  || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; } \
	  || echo "warning: could not install Debian's chromium package; the viewer tests will be skipped"
	touch $@

# The Khronos glTF validator (npm, pinned by tests/gltf/package-lock.json) for the avatar.glb tests;
# without node/npm or the registry the install fails and that test skips, saying so.
tests/gltf/node_modules/.installed: tests/gltf/package.json tests/gltf/package-lock.json
	cd tests/gltf && npm ci --no-audit --no-fund --silent >/dev/null 2>&1 \
	  && touch node_modules/.installed \
	  || echo "warning: could not install the glTF validator (npm ci in tests/gltf); its test will be skipped"

setup: $(VENV)/.installed

demo: setup
	$(LOOPBACK) $(VENV)/bin/avatar-forge batch samples out/demo
	@echo "results: $(CURDIR)/out/demo (avatars/<id>/, manifest/manifest.parquet, summary.json)"

test: setup $(VENV)/prometheus/.fetched $(VENV)/chromium.checked tests/gltf/node_modules/.installed
	$(LOOPBACK) $(VENV)/bin/pytest -q

test-all: setup $(VENV)/prometheus/.fetched $(VENV)/chromium.checked tests/gltf/node_modules/.installed
	$(LOOPBACK) $(VENV)/bin/pytest -q -m ''

# Every CUDA path once, within 8 minutes, as one JSON object (exits 0 saying so without CUDA).
gpu-check:
	bash bench/gpu_check.sh
