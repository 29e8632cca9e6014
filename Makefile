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

.PHONY: setup demo test test-all

$(VENV)/.installed: pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints/cpu.txt -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/avatar-forge track samples/*.jpg samples/*.png -o out/track
	@echo "results: $(CURDIR)/out/track (<photo>.json fitted parameters, <photo>_overlay.png)"

test: setup
	$(LOOPBACK) $(VENV)/bin/pytest -q

test-all: setup
	$(LOOPBACK) $(VENV)/bin/pytest -q -m ''
