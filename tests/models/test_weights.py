"""Weight files that do not read, or do not fit, are one error naming the file and the first keys."""

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from hydra_umm.models.weights import fit_weights, read_weights


def test_unreadable_weight_files_are_named(tmp_path):
    state = {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}
    save_file(state, str(tmp_path / "good.safetensors"))
    torch.save(state, tmp_path / "good.pt")
    assert all(torch.equal(read_weights(tmp_path / f"good.{s}")["weight"], state["weight"]) for s in ("safetensors", "pt"))
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "good.safetensors").read_bytes()[:20])
    (tmp_path / "notes.pt").write_text("not weights")
    for name, kind in [("cut.safetensors", "safetensors"), ("notes.pt", "PyTorch")]:
        with pytest.raises(ValueError, match=rf"{name} is not a readable {kind} weights file \("):
            read_weights(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        read_weights(tmp_path / "nowhere.pt")


def test_weights_that_do_not_fit_name_the_first_keys():
    layer = nn.Linear(3, 2)
    fit_weights(layer, {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}, "w.pt")
    assert torch.equal(layer.weight, torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"w.pt do not fit this Linear .*1 missing, e.g. bias; "
                                         r"1 unexpected, e.g. scale; 1 of other shapes, e.g. weight \(4, 3\) for \(2, 3\)"):
        fit_weights(layer, {"weight": torch.ones(4, 3), "scale": torch.ones(1)}, "w.pt")
    assert torch.equal(layer.weight, torch.ones(2, 3))  # untouched
