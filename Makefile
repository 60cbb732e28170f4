# Set-up and the two everyday commands. Each target installs what it needs itself.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.facekd-installed
PYTEST_ARGS ?= -m "not slow and not gpu"

# Beside a checkout that has ../shared (the development machines, CI), use its LFW and
# reference weights instead of downloading them.
SHARED := $(abspath ../shared)
ifneq ($(wildcard $(SHARED)/data/lfw/pairs.txt),)
export FACEKD_DATA ?= $(SHARED)/data
endif
ifneq ($(wildcard $(SHARED)/weights/mobilefacenet_casia.ckpt),)
export FACEKD_WEIGHTS ?= $(SHARED)/weights
endif

.PHONY: install demo test test-all clean

$(STAMP): setup.py constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --constraint constraints.txt --editable '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Fetches LFW and the reference MobileFaceNet if they are not local ($$FACEKD_DATA,
# $$FACEKD_WEIGHTS), aligns LFW, evaluates, prints the table.
demo: $(STAMP)
	$(VENV)/bin/facekd demo

# pytest exits 5 when it collected nothing: that is a failure here, said out loud.
test: $(STAMP)
	@$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

test-all: PYTEST_ARGS = -m "not gpu"
test-all: test

clean:
	rm -rf $(VENV) facekd-demo .pytest_cache
