"""proxopt.groups: which parameters are quantized, and the group levels of every optimizer."""
from __future__ import annotations

import io
import re

import pytest
import torch
from torch import nn

import proxopt
from proxopt.groups import NORM_TYPES, describe_groups, group_bits, group_levels, param_groups
from proxopt.optim.bop import Bop


def convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.LayerNorm(16), nn.Linear(16, 16), nn.Linear(16, 10),
    )


def by_flag(groups):
    out = {True: [], False: []}
    for g in groups:
        out[g["quantize"]] += g["param_names"]
    return out


def test_default_rule_keeps_biases_norms_first_and_last():
    net = convnet()
    groups = param_groups(net)
    assert [g["quantize"] for g in groups] == [True, False]
    flags = by_flag(groups)
    assert flags[True] == ["3.weight", "7.weight", "9.weight"]
    names = [n for n, _ in net.named_parameters()]
    assert sorted(flags[True] + flags[False]) == sorted(names)  # every parameter exactly once
    assert "0.weight" in flags[False] and "10.weight" in flags[False]
    assert all(n in flags[False] for n in names if n.endswith("bias"))
    assert {"1.weight", "4.weight", "8.weight"} <= set(flags[False])
    # the tensors are the model's own, in the order of their names
    params = dict(net.named_parameters())
    for g in groups:
        assert all(p is params[n] for p, n in zip(g["params"], g["param_names"]))


def test_first_and_last_layer_options():
    net = convnet()
    flags = by_flag(param_groups(net, quantize_first=True))
    assert flags[True] == ["0.weight", "3.weight", "7.weight", "9.weight"]
    flags = by_flag(param_groups(net, quantize_first=True, quantize_last=True))
    assert flags[True] == ["0.weight", "3.weight", "7.weight", "9.weight", "10.weight"]


def test_layer_norm_with_matrix_weight_is_kept_by_type_and_first_layer_skips_norms():
    # an input normalization is not "the first layer"; a 2-d LayerNorm weight stays fp by its type
    net = nn.Sequential(nn.LayerNorm([4, 5]), nn.Flatten(), nn.Linear(20, 8), nn.Linear(8, 8), nn.Linear(8, 2))
    flags = by_flag(param_groups(net))
    assert flags[True] == ["3.weight"]
    assert "0.weight" in flags[False] and "2.weight" in flags[False]
    assert nn.LayerNorm in NORM_TYPES and nn.BatchNorm2d in NORM_TYPES


def test_keep_types_keep_patterns_and_regex():
    net = convnet()
    flags = by_flag(param_groups(net, keep_types=(nn.Conv2d,)))
    assert flags[True] == ["7.weight", "9.weight"]
    flags = by_flag(param_groups(net, keep=["7.*"]))
    assert flags[True] == ["3.weight", "9.weight"]
    flags = by_flag(param_groups(net, keep="9"))  # a module name keeps all its parameters
    assert flags[True] == ["3.weight", "7.weight"]
    flags = by_flag(param_groups(net, keep=[re.compile(r"^[37]\.")]))
    assert flags[True] == ["9.weight"]
    with pytest.raises(ValueError, match="keep"):
        param_groups(net, keep=["classifier.*"])
    with pytest.raises(TypeError, match="keep"):
        param_groups(net, keep=[3])


def test_quantize_if_decides_alone_and_keep_still_applies():
    net = convnet()
    groups = param_groups(net, quantize_if=lambda name, p, m: isinstance(m, nn.Linear))
    flags = by_flag(groups)
    assert flags[True] == ["7.weight", "7.bias", "9.weight", "9.bias", "10.weight", "10.bias"]
    flags = by_flag(param_groups(net, quantize_if=lambda name, p, m: isinstance(m, nn.Linear), keep="*.bias"))
    assert flags[True] == ["7.weight", "9.weight", "10.weight"]
    with pytest.raises(TypeError, match="quantize_if"):
        param_groups(net, quantize_if=lambda name, p, m: 1)
    with pytest.raises(TypeError, match="quantize_if"):
        param_groups(net, quantize_if=3)


def test_frozen_parameters_stay_full_precision_and_shared_ones_appear_once():
    a = nn.Linear(6, 6, bias=False)
    net = nn.Sequential(nn.Linear(6, 6), a, nn.Linear(6, 6), nn.Linear(6, 6), a, nn.Linear(6, 2))
    net[2].weight.requires_grad_(False)
    groups = param_groups(net)
    flags = by_flag(groups)
    assert flags[True] == ["1.weight", "3.weight"]
    assert "2.weight" in flags[False]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))


def test_group_kwargs_reach_the_optimizer_and_state_dict_is_weights_only():
    net = convnet()
    groups = param_groups(net, fp_kwargs={"weight_decay": 1e-4, "lr": 1e-2}, quantized_kwargs={"lr": 1e-3})
    opt = proxopt.optimizer("bc", groups, lr=5e-3)
    assert opt.param_groups[0]["lr"] == 1e-3 and opt.param_groups[1]["lr"] == 1e-2
    assert opt.param_groups[1]["weight_decay"] == 1e-4 and opt.param_groups[0]["weight_decay"] == 0
    assert set(net[3].weight.detach().flatten().tolist()) <= {-1.0, 1.0}
    assert len(set(net[0].weight.detach().flatten().tolist())) > 2  # first layer untouched
    net(torch.randn(2, 3, 8, 8)).square().mean().backward()
    opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    assert sd["param_groups"][0]["param_names"] == groups[0]["param_names"]
    opt.load_state_dict(sd)
    with pytest.raises(ValueError, match="fp_kwargs"):
        param_groups(net, fp_kwargs={"quantize": True})
    with pytest.raises(TypeError, match="quantized_kwargs"):
        param_groups(net, quantized_kwargs=[("lr", 1)])


def test_verbose_and_describe(capsys):
    net = convnet()
    groups = param_groups(net, verbose=True)
    out = capsys.readouterr().out
    assert "first layer" in out and "last layer" in out and "BatchNorm2d" in out and "bias" in out
    assert "3.weight" in out
    text = describe_groups(groups)
    assert text.splitlines()[0].startswith("group 0  quantize=True")
    n_q = sum(p.numel() for p in groups[0]["params"])
    assert f"{n_q:,d} params" in text.splitlines()[0]


def test_invalid_arguments():
    with pytest.raises(TypeError, match="model"):
        param_groups([nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="no parameters"):
        param_groups(nn.ReLU())
    with pytest.raises(TypeError, match="quantize_first"):
        param_groups(convnet(), quantize_first=1)
    with pytest.raises(ValueError, match="min_ndim"):
        param_groups(convnet(), min_ndim=-1)
    with pytest.raises(TypeError, match="keep_types"):
        param_groups(convnet(), keep_types=["Conv2d"])


def test_single_group_models():
    flags = by_flag(param_groups(nn.Linear(3, 3)))  # the only layer is first and last
    assert flags[True] == [] and sorted(flags[False]) == ["bias", "weight"]
    assert by_flag(param_groups(nn.Linear(3, 3), quantize_first=True))[True] == []
    groups = param_groups(nn.Linear(3, 3, bias=False), quantize_first=True, quantize_last=True)
    assert len(groups) == 1 and groups[0]["quantize"] is True


@pytest.mark.parametrize("name, kwargs, levels", [
    ("bc", {}, (-1.0, 1.0)),
    ("pc", {"levels": "ternary"}, (-1.0, 0.0, 1.0)),
    ("pq", {"levels": 2}, proxopt.levels.make_levels(2)),
    ("md-tanh-s", {"levels": "ternary"}, (-1.0, 0.0, 1.0)),
    ("md-softmax-s", {"levels": 3}, proxopt.levels.make_levels(3)),
])
def test_group_levels_of_presets(name, kwargs, levels):
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    opt = proxopt.optimizer(name, param_groups(net), lr=1e-3, **kwargs)
    assert group_levels(opt.param_groups[0], opt) == levels
    assert group_bits(opt.param_groups[0], opt) == max(1, (len(levels) - 1).bit_length())
    assert group_levels(opt.param_groups[1], opt) is None and group_bits(opt.param_groups[1], opt) is None


def test_group_levels_of_bop_identity_and_unknown():
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    opt = Bop(param_groups(net), lr=1e-3)
    assert group_levels(opt.param_groups[0], opt) == (-1.0, 1.0)
    pp = proxopt.ProxConnectPP([nn.Parameter(torch.randn(3))], forward="identity")
    assert group_levels(pp.param_groups[0], pp) is None
    with pytest.raises(ValueError, match="level set"):
        group_levels({"quantize": True, "params": []})
