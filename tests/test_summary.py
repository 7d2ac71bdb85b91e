"""proxopt.summary: bits, memory and compression per param group."""
from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import proxopt
from proxopt.export import save_binary
from proxopt.groups import param_groups
from proxopt.optim.bop import Bop
from proxopt.summary import Summary, summary


def mlp(width=64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, width), nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, 3))


def fp_count(model, groups):
    return sum(p.numel() for p in groups[1]["params"])


@pytest.mark.parametrize("name, kwargs, bits, levels", [
    ("bc", {}, 1, 2),
    ("pc", {"levels": "ternary"}, 2, 3),
    ("md-softmax-s", {"levels": 3}, 3, 8),
    ("pq", {"levels": 2}, 2, 4),
])
def test_rows_bits_and_bytes_per_group(name, kwargs, bits, levels):
    model = mlp()
    groups = param_groups(model)
    opt = proxopt.optimizer(name, groups, lr=1e-3, **kwargs)
    s = summary(model, opt, print_fn=None)
    q, f = s.rows
    assert (q.label, q.quantize, q.tensors, q.params, q.levels, q.bits) == ("group 0", True, 2, 2 * 64 * 64, levels,
                                                                           bits)
    assert q.packed_bytes == 2 * bits * (64 * 64 // 8) and q.fp32_bytes == 4 * 2 * 64 * 64
    assert q.compression == pytest.approx(32.0 / bits)
    n_fp = fp_count(model, groups)
    assert (f.quantize, f.levels, f.bits, f.params, f.packed_bytes) == (False, None, 32.0, n_fp, 4 * n_fp)
    assert s.params == sum(p.numel() for p in model.parameters())
    assert s.compression == pytest.approx(s.fp32_bytes / s.packed_bytes)
    assert s.quantized_params == 2 * 64 * 64


def test_bop_bf16_float64_and_parameters_outside_the_optimizer():
    model = mlp()
    model[0].to(torch.bfloat16)
    model[3].double()
    groups = param_groups(model)
    opt = Bop(groups[:1], lr=1e-3)  # only the quantized group: the rest is "not in optimizer"
    opt.add_param_group({"params": list(model[0].parameters()), "quantize": False,
                         "param_names": ["0.weight", "0.bias"]})
    s = summary(model, opt, print_fn=None)
    assert [r.label for r in s.rows] == ["group 0", "group 1", "not in optimizer"]
    assert s.rows[0].bits == 1.0 and s.rows[0].levels == 2
    assert s.rows[1].bits == 16.0 and s.rows[1].packed_bytes == 2 * s.rows[1].params
    rest = s.rows[2]
    n64 = sum(p.numel() for p in model[3].parameters())
    n32 = rest.params - n64
    assert rest.packed_bytes == 8 * n64 + 4 * n32
    assert rest.bits == pytest.approx(8.0 * rest.packed_bytes / rest.params)


def test_scale_options_add_one_value_per_tensor_or_channel():
    w = nn.Parameter(torch.randn(32, 16))
    v = nn.Parameter(torch.randn(8, 4, 3, 3))
    model = nn.ParameterList([w, v])
    for scale, extra in ((None, 0), ("tensor", 2 * 4), ("channel", (32 + 8) * 4)):
        opt = proxopt.optimizer("bc", [w, v], lr=1e-3, scale=scale)
        row = summary(model, opt, print_fn=None).rows[0]
        assert row.scale == scale
        assert row.packed_bytes == (32 * 16 + 8 * 36) // 8 + extra
    # any object with proxopt-style param groups will do
    fake = SimpleNamespace(param_groups=[{"params": [w], "quantize": True, "levels": "ternary", "scale": "channel"}])
    row = summary(model, fake, print_fn=None).rows[0]
    assert (row.levels, row.bits, row.packed_bytes) == (3, 2.0, 2 * 32 * 16 // 8 + 32 * 4)


def test_without_optimizer_detects_from_values_like_the_export():
    model = mlp()
    with torch.no_grad():
        model[1].weight.normal_()
        model[2].weight.normal_()
    opt = proxopt.optimizer("pc", param_groups(model), levels="ternary", lr=1e-3)
    opt.finalize()
    with torch.no_grad():
        model[1].weight.mul_(0.25)  # a scale does not change the format
    s = summary(model, print_fn=None)
    assert [r.label for r in s.rows] == ["2-bit (detected)", "full precision"]
    assert s.rows[0].params == 2 * 64 * 64 and s.rows[0].levels == 3 and s.rows[0].scale == "tensor"
    report = save_binary(model, io.BytesIO())
    assert s.packed_bytes == report.packed_bytes


def test_printing_and_string(capsys):
    model = mlp()
    opt = proxopt.optimizer("bc", param_groups(model), lr=1e-3)
    s = summary(model, opt)
    out = capsys.readouterr().out
    assert isinstance(s, Summary) and out.strip() == str(s).strip()
    assert "group 0" in out and "total" in out and f"{s.compression:.2f}x" in out
    lines = []
    summary(model, opt, print_fn=lines.append)
    assert lines == [str(s)]
    with pytest.raises(TypeError, match="model"):
        summary(opt)
