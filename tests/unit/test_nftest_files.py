"""nf-test files (for users who have nf-test) stay consistent with the pipeline they test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.pipeline.nfrun import nftest_pipeline_paths

REPO = Path(__file__).resolve().parents[2]
MODULES = sorted(p.parent for p in (REPO / "modules" / "local").glob("*/main.nf"))


def _inputs(module_nf: str) -> int:
    block = re.search(r"\n\s*input:\n(.*?)\n\s*output:", module_nf, re.S).group(1)
    return len([ln for ln in block.splitlines() if re.match(r"\s*(path|val|tuple)\b", ln)])


def test_every_module_has_an_nftest():
    assert MODULES, "no local modules found"
    missing = [m.name for m in MODULES if not (m / "tests" / "main.nf.test").exists()]
    assert not missing


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.name)
def test_module_nftest_matches_module(module: Path):
    main = (module / "main.nf").read_text()
    test = (module / "tests" / "main.nf.test").read_text()
    declared = re.search(r"^process\s+(\w+)", main, re.M).group(1)
    assert re.search(rf'process\s+"{declared}"', test), f"{module.name}: test names another process"
    assert 'script "../main.nf"' in test
    emits = set(re.findall(r"emit:\s*(\w+)", main))
    used = set(re.findall(r"process\.out\.(\w+)", test))
    assert used and used <= emits, f"{module.name}: unknown outputs {used - emits}"
    n_inputs = len(set(re.findall(r"input\[(\d+)\]", test)))
    assert n_inputs == _inputs(main), f"{module.name}: test gives {n_inputs} inputs, module takes {_inputs(main)}"
    for ref in re.findall(r'\$\{projectDir\}/([^"]+)"', test):
        assert (REPO / ref).exists(), f"{module.name}: {ref} does not exist"


def test_pipeline_nftest_targets_main_and_published_folders():
    text = (REPO / "tests" / "main.nf.test").read_text()
    assert 'script "../main.nf"' in text
    folders = {p.split("/")[0] for p in nftest_pipeline_paths()}
    publish = {m.name for m in MODULES} | {"pipeline_info"}
    assert folders <= publish, folders - publish
    assert (REPO / "nf-test.config").exists()
