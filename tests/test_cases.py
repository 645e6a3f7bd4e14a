"""Case ids and seeds follow specs/README.md §5 exactly."""

import hashlib

import torch

from attnbench.cases import Case, format_value, seed


def test_seed_is_the_spec_formula() -> None:
    shape_id = "ccnet/cca/B=2,C=4,Cq=3,H=4,W=5"
    expected = int.from_bytes(hashlib.sha256(f"{shape_id}|q".encode()).digest()[:8], "little") & (2**63 - 1)
    assert seed(shape_id, "q") == expected
    assert seed(shape_id, "q") != seed(shape_id, "k")


def test_case_id_sorts_keys_and_names_dtype_device() -> None:
    case = Case("ccnet", "cca", {"W": 5, "B": 2, "H": 4})
    assert case.shape_id == "ccnet/cca/B=2,H=4,W=5"
    assert case.case_id("float32", "cpu") == "ccnet/cca/B=2,H=4,W=5/float32/cpu"
    assert Case("danet.cam", "cam", {"B": 1}).shape_id == "danet/cam/B=1"


def test_values_format_stably() -> None:
    assert format_value(True) == "true"
    assert format_value(None) == "none"
    assert format_value(0.5) == "0.5"
    assert format_value((3, 4)) == "3x4"


def test_draws_are_reproducible_and_shared_across_dtypes() -> None:
    case = Case("ccnet", "cca", {"B": 1})
    a = case.randn("q", 3, 4)
    b = case.randn("q", 3, 4)
    assert a.dtype == torch.float64
    assert torch.equal(a, b)
    assert not torch.equal(a, case.randn("k", 3, 4))
