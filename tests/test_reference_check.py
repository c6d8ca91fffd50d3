"""`diffheads check-reference`: our code against golden values of the authors' code, and that it can fail."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
import torch

from diffheads.cli import main
from diffheads.reference.golden import check_golden, load_golden

GOLDEN = Path(__file__).parent / "data" / "golden_small.pt"
NETWORK_PART = (
    "config",
    "state_dict",
    "inputs",
    "output",
    "intermediates",
    "param_count",
    "timestep_features",
    "timestep_features_t",
)


@pytest.fixture(scope="module")
def golden() -> dict:
    return load_golden(GOLDEN)


def test_the_project_copy_is_the_reference_file(reference_dir):
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(GOLDEN) == digest(reference_dir / "golden_small.pt")


def test_every_golden_value_is_reproduced(golden):
    checks = check_golden(golden)
    names = {c.name for c in checks}
    assert len(checks) >= 50
    assert {
        "network output",
        "param_count",
        "p_mean",
        "p_logvar",
        "vlb loss",
        "lip loss",
        "respaced timesteps (100)",
        "alpha_bar (float64)",
    } <= names
    assert [c.name for c in checks if not c.ok] == []
    worst = max(c.max_abs_error for c in checks if c.name == "network output")
    assert worst < 2e-5  # the reference itself moves by 2.4e-6 between thread counts


def test_a_perturbed_weight_fails(golden):
    bad = copy.deepcopy(golden)
    bad["state_dict"]["output_blocks.0.0.in_layers.2.weight"].add_(1e-2)
    failed = {c.name for c in check_golden(bad) if not c.ok}
    assert "network output" in failed and "intermediate middle_block" not in failed  # only what follows the change


def test_a_perturbed_diffusion_value_fails(golden):
    bad = copy.deepcopy(golden)
    bad["p_params"]["p_mean"][1] += 1e-3
    bad["lip_loss"]["loss"] *= 1.001
    failed = {c.name for c in check_golden(bad) if not c.ok}
    assert failed == {"p_mean", "lip loss"}


def test_network_part_alone_is_enough(golden):
    net = {k: v for k, v in golden.items() if k in NETWORK_PART}
    checks = check_golden(net)
    assert all(c.ok for c in checks) and not [c for c in checks if "vlb" in c.name or "schedule" in c.name]


def test_command_exit_codes(golden, tmp_path, capsys):
    assert main(["check-reference", str(GOLDEN)]) == 0
    bad = copy.deepcopy(golden)
    bad["state_dict"]["out.2.bias"].add_(0.1)
    torch.save(bad, tmp_path / "bad.pt")
    assert main(["check-reference", str(tmp_path / "bad.pt")]) == 1
    assert "FAIL network output" in capsys.readouterr().err
    torch.save({"config": {}}, tmp_path / "partial.pt")
    assert main(["check-reference", str(tmp_path / "partial.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lacks the network part (state_dict, inputs, output)" in err[0]
    assert main(["check-reference", str(tmp_path / "nope.pt")]) == 2
