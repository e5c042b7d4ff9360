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

.PHONY: setup env nextflow demo test clean

setup: env nextflow

env: $(VENV)/.installed

# pip's cache is kept on purpose: the CUDA torch wheel is several GB.
$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q -r requirements.txt -r requirements-dev.txt
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

test: setup
	$(VENV)/bin/python -m pytest tests

clean:
	rm -rf work .nextflow .nextflow.log* $(OUTDIR) tests/.runs
