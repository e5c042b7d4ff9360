# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create what they need on first use (.venv from the pinned lists, the Nextflow runtime)
# and reuse it afterwards.
SHELL       := /bin/bash
PYTHON      ?= python3
VENV        := .venv
NXF_VERSION := 25.04.4
NXF_JAR     := .nextflow-runtime/nextflow-$(NXF_VERSION)-one.jar
OUTDIR      ?= results

export PATH        := $(CURDIR)/tools:$(CURDIR)/$(VENV)/bin:$(PATH)
export NXF_HOME    := $(CURDIR)/.nxf_home
export NXF_OFFLINE := true
export NXF_VER     := $(NXF_VERSION)

.PHONY: setup env nextflow demo test lint image test-image clean

setup: env nextflow

env: $(VENV)/.installed

# pip's cache is kept on purpose: the CUDA torch wheel is several GB.
$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q -r requirements.txt
	$(VENV)/bin/pip install --disable-pip-version-check -q --no-deps -r requirements-dev.txt
	touch $@

nextflow: $(NXF_JAR)

$(NXF_JAR):
	mkdir -p $(dir $@)
	mvn -q -B dependency:copy -Dartifact=io.nextflow:nextflow:$(NXF_VERSION):jar:one \
	    -DoutputDirectory=$(dir $@)
	nextflow -version

demo: setup
	nextflow run . -profile test --outdir $(OUTDIR)
	@echo "Report: $(OUTDIR)/report/bulk2single_report.html"

test: setup lint
	$(VENV)/bin/python -m pytest tests

# ruff (settings in pyproject.toml): pyflakes, isort, no private name imported from another package
lint: env
	$(VENV)/bin/ruff check bin tests benchmarks tools

# The runtime image (containers/README.md): a Docker engine is installed (Debian's docker.io) and
# started when missing, and stopped again if this target started it; the base is bootstrapped from
# Debian packages when absent; the build is skipped when the image of the same inputs exists.
IMAGE         ?= ghcr.io/nf-bulk2single/nf-bulk2single
IMAGE_VERSION := $(shell sed -n "s/^ *version *= *'\(.*\)'.*/\1/p" nextflow.config)
export IMAGE
image:
	VERSION=$(IMAGE_VERSION) containers/engine.sh run containers/image.sh

# Container tests (tests/container, not part of `make test`): the test profile in the image as a
# non-root uid against the same run without the container, pip freeze/check in the image.
test-image: setup
	VERSION=$(IMAGE_VERSION) containers/engine.sh run bash -c \
	    'containers/image.sh && B2S_IMAGE=$(IMAGE):$(IMAGE_VERSION) $(VENV)/bin/python -m pytest tests/container'

clean:
	rm -rf work .nextflow .nextflow.log* $(OUTDIR) tests/.runs
