"""A test of the test: the nf-test stand-in (test_nftest_files.py) fails on what broke the suite.

tests/unit/fixtures/nftest_broken/ holds verbatim copies of the three module tests that a real
nf-test 0.9.5 could not run (commit bb931c8: each staged two inputs under one file name). The
other cases mutate the current, passing tests into inputs that do not fit the process signature.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_nftest_files import REPO, check_nftest

FIXTURES = Path(__file__).parent / "fixtures" / "nftest_broken"


def _errors(module: str, text: str) -> list[str]:
    errors, _ = check_nftest(text, REPO / "modules" / "local" / module / "tests")
    return errors


@pytest.mark.parametrize(
    ("module", "name"),
    [("generate", "reference.h5ad"), ("qc", "reference.h5ad"), ("report", "samplesheet.csv")],
)
def test_fails_on_the_broken_tests_of_bb931c8(module: str, name: str):
    errors = _errors(module, (FIXTURES / f"{module}.main.nf.test.txt").read_text())
    collisions = [e for e in errors if "input file name collision" in e]
    assert collisions, errors
    assert all(f"'{name}'" in e for e in collisions), collisions


def test_qc_fixture_reports_each_extra_copy():
    # reference.h5ad is given three times: as generated, filtered and model input
    errors = _errors("qc", (FIXTURES / "qc.main.nf.test.txt").read_text())
    assert len([e for e in errors if "collision" in e]) == 2, errors


def _current(module: str) -> str:
    return (REPO / "modules" / "local" / module / "tests" / "main.nf.test").read_text()


@pytest.mark.parametrize("module", ["generate", "qc", "report", "filter", "train_vae", "estimate_fractions",
                                    "preprocess", "prepare_inputs"])
def test_current_tests_pass_the_same_check(module: str):
    assert _errors(module, _current(module)) == []


def _mutated(module: str, old: str, new: str) -> list[str]:
    text = _current(module)
    assert old in text, f"mutation target not in {module} test: {old}"
    return _errors(module, text.replace(old, new, 1))


def test_fails_on_a_missing_input():
    errors = _mutated("generate", "                input[5] = PREPARE_INPUTS.out.groups\n", "")
    assert any("GENERATE takes 6 input(s), the test sets input[0, 1, 2, 3, 4]" in e for e in errors), errors


def test_fails_on_a_tuple_of_the_wrong_arity():
    # QC takes tuple(meta, generated, filtered): GENERATE's output alone is (meta, generated)
    errors = _mutated("qc", "input[0] = GENERATE.out.generated.join(FILTER.out.filtered)", "input[0] = GENERATE.out.generated")
    assert any("tuple of 3" in e and "gives 2 elements" in e for e in errors), errors


def test_fails_on_a_path_where_a_tuple_is_expected():
    errors = _mutated("filter", "input[0] = GENERATE.out.generated",
                      'input[0] = file("${projectDir}/assets/test_data/reference.h5ad")')
    assert any("takes a tuple of 2" in e and "gives a file" in e for e in errors), errors


# (module test, text replaced, replacement, the error the stand-in must report)
MUTATIONS = [
    pytest.param("train_vae", "input[0] = PREPROCESS.out.model_input", 'input[0] = "model_input.h5ad"',
                 "takes path model_input, the test gives val", id="value-where-a-path-is-expected"),
    pytest.param("estimate_fractions", "input[0] = PREPARE_INPUTS.out.bulk", "input[0] = PREPARE_INPUTS.out.counts",
                 "PREPARE_INPUTS has no output 'counts'", id="output-the-setup-process-does-not-emit"),
    pytest.param("generate", "input[2] = TRAIN_VAE.out.weights", "input[2] = TRAIN.out.weights",
                 "TRAIN is not run in this test's setup", id="process-not-set-up"),
    pytest.param("train_vae", 'script "../../preprocess/main.nf"', 'script "../../preprocess/mian.nf"',
                 "does not exist", id="wrong-setup-script"),
    # PREPARE_INPUTS stages all four inputs under input/: two files named alike collide there
    pytest.param("prepare_inputs", "input[3] = file(\"${projectDir}/assets/test_data/samplesheet.csv\")",
                 "input[3] = file(\"${projectDir}/assets/test_data/reference.h5ad\")",
                 "collision: 'input/reference.h5ad'", id="collision-through-stage-as"),
    pytest.param("report", 'collectFile(name: "params.json")', 'collectFile(name: "software_versions.yml")',
                 "collision: 'software_versions.yml'", id="collision-between-collected-files"),
    pytest.param("preprocess", "assets/test_data/samplesheet.csv", "assets/test_data/samplesheet.tsv",
                 "assets/test_data/samplesheet.tsv does not exist", id="missing-bundled-file"),
    pytest.param("train_vae", "epoch_num        = 5", "epochs = 5",
                 "params.epochs is not a pipeline parameter", id="unknown-param"),
    pytest.param("generate", "process.out.versions", "process.out.version",
                 "no output(s) ['version']", id="unknown-output"),
]


@pytest.mark.parametrize(("module", "old", "new", "expected"), MUTATIONS)
def test_fails_on_a_mutated_test(module: str, old: str, new: str, expected: str):
    errors = _mutated(module, old, new)
    assert any(expected in e for e in errors), errors
