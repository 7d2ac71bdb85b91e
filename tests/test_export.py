"""proxopt.export: bit-packed save / load, bitwise exact, at least 25x smaller for binary weights."""
from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import proxopt
from proxopt.export import (FORMAT, decode_tensor, encode_tensor, load_binary, pack_bits, save_binary,
                            unpack_bits)
from proxopt.groups import param_groups

INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits_of(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(INT[t.element_size()])


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits_of(a), bits_of(b))


def roundtrip(t: torch.Tensor, mode: str = "auto") -> dict:
    e = encode_tensor(t, mode)
    back = decode_tensor(e)
    assert same_bits(back, t), (e["kind"], t, back)
    return e


def binary(shape, scale=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0).to(dtype)
    if scale is not None:
        w = w * torch.as_tensor(scale, dtype=dtype)
    return w


def from_levels(levels, shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    lv = torch.tensor(levels, dtype=dtype)
    return lv[torch.randint(len(levels), shape, generator=g)]


# ------------------------------------------------------------------ bit planes
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 70), st.integers(0, 8), st.integers(0, 2 ** 31))
def test_pack_unpack_roundtrip_and_size(n, bits, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2 ** bits, (n,), generator=g)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and tuple(packed.shape) == (bits, (n + 7) // 8)
    assert torch.equal(unpack_bits(packed, n), codes)


def test_pack_bits_layout_is_lsb_first():
    assert pack_bits(torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1]), 1).tolist() == [[129, 1]]
    assert pack_bits(torch.tensor([2, 1]), 2).tolist() == [[2], [1]]
    with pytest.raises(ValueError, match="bits"):
        pack_bits(torch.tensor([1]), 9)
    with pytest.raises(ValueError, match="packed"):
        unpack_bits(torch.zeros(1, 2, dtype=torch.uint8), 3)


# --------------------------------------------------------------------- tensors
def test_binary_per_tensor_and_scaled():
    e = roundtrip(binary((16, 9)))
    assert (e["kind"], e["bits"], e["channel"]) == ("sign", 1, False) and e["scale"].tolist() == [1.0]
    e = roundtrip(binary((16, 9), scale=0.37))
    assert e["kind"] == "sign" and e["scale"].tolist() == [pytest.approx(0.37)]
    assert tuple(e["codes"].shape) == (1, (16 * 9 + 7) // 8)


def test_binary_per_channel_scale():
    scale = torch.linspace(0.1, 2.0, 32).unsqueeze(1)
    e = roundtrip(binary((32, 40), scale=scale))
    assert (e["kind"], e["bits"], e["channel"]) == ("sign", 1, True)
    assert tuple(e["scale"].shape) == (32,)
    assert torch.equal(e["scale"], scale.squeeze(1))
    w4 = binary((8, 4, 3, 3), scale=torch.rand(8, 1, 1, 1) + 0.5)  # conv kernel, per output channel
    assert roundtrip(w4)["channel"] is True


@pytest.mark.parametrize("levels, bits", [
    ((-1.0, 0.0, 1.0), 2),
    ((-0.5, 0.0, 0.5), 2),
    (proxopt.levels.make_levels(2), 2),
    (proxopt.levels.make_levels(3), 3),
    ((-3.0, -1.0, 0.5, 1.0, 7.0), 3),
    (proxopt.levels.make_levels(4), 4),
])
def test_level_sets_pack_at_their_bit_width(levels, bits):
    t = from_levels(levels, (37, 29))
    e = roundtrip(t)
    assert (e["kind"], e["bits"]) == ("levels", bits)
    assert tuple(e["codes"].shape) == (bits, (37 * 29 + 7) // 8)


def test_ternary_per_channel_levels():
    t = from_levels((-1.0, 0.0, 1.0), (24, 50)) * (torch.rand(24, 1) + 0.5)
    e = roundtrip(t)
    assert (e["kind"], e["bits"], e["channel"]) == ("levels", 2, True)
    assert tuple(e["levels"].shape) == (24, 3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16, torch.float32])
def test_dtypes_are_restored_bit_for_bit(dtype):
    t = from_levels((-1.0, 0.0, 1.0), (13, 7), dtype=dtype) * torch.tensor(0.3, dtype=dtype)
    t[0, 0] = -0.0  # -0.0 and +0.0 are different bit patterns and must both survive
    t[0, 1] = 0.0
    e = roundtrip(t)
    assert e["levels"].dtype == dtype and e["bits"] == 2
    assert roundtrip(binary((5, 11), 0.7, dtype))["kind"] == "sign"


def test_odd_numel_zero_dim_and_empty():
    for n in (1, 3, 7, 9, 13, 1001):
        roundtrip(binary((n,)), "tensor")
        roundtrip(from_levels((-1.0, 0.0, 1.0), (n,)), "tensor")
    for t in (torch.tensor(-0.5), torch.tensor(1.0, dtype=torch.float64)):
        assert roundtrip(t)["kind"] == "raw"  # 4 bytes raw beat a packed record
        assert roundtrip(t, "tensor")["kind"] != "raw"
    for shape in ((0,), (0, 5), (3, 0)):
        t = torch.zeros(shape, dtype=torch.bfloat16)
        roundtrip(t)
        assert roundtrip(t, "tensor")["kind"] == "levels"
        roundtrip(t, "channel")
    with pytest.raises(ValueError, match="channel"):
        encode_tensor(torch.tensor(1.0), "channel")


def test_full_precision_integer_and_nan_tensors_stay_raw():
    assert roundtrip(torch.randn(64, 64))["kind"] == "raw"
    assert roundtrip(torch.arange(100))["kind"] == "raw"
    nan = torch.full((300,), float("nan"))
    nan[::2] = -nan[::2]
    roundtrip(nan)
    with pytest.raises(ValueError, match="mode"):
        encode_tensor(torch.arange(10), "tensor")
    with pytest.raises(ValueError, match="distinct"):
        encode_tensor(torch.randn(1000), "tensor", max_bits=4)
    with pytest.raises(ValueError, match="mode"):
        encode_tensor(torch.zeros(3), "bits")
    with pytest.raises(ValueError, match="max_bits"):
        encode_tensor(torch.zeros(3), max_bits=9)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(1, 40), st.integers(1, 9), st.booleans(),
       st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]), st.integers(0, 2 ** 31))
def test_any_small_level_set_roundtrips(rows, cols, d, per_channel, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    if per_channel:
        table = torch.randn(rows, d, generator=g).to(dtype)
        t = table.gather(1, torch.randint(d, (rows, cols), generator=g))
    else:
        t = torch.randn(d, generator=g).to(dtype)[torch.randint(d, (rows, cols), generator=g)]
    for mode in ("auto", "tensor", "channel"):
        roundtrip(t, mode)


# ---------------------------------------------------------------------- models
class Net(nn.Module):
    def __init__(self, width: int = 256, depth: int = 4, bias: bool = False, norm: bool = False) -> None:
        super().__init__()
        layers = []
        for _ in range(depth):
            layers.append(nn.Linear(width, width, bias=bias))
            if norm:
                layers.append(nn.BatchNorm1d(width))
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


def binarize_(model: nn.Module, per_channel: bool = False) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                w = torch.where(m.weight >= 0, 1.0, -1.0)
                if per_channel:
                    w = w * m.weight.abs().mean(1, keepdim=True)  # XNOR-Net's per-channel scale
                m.weight.copy_(w)
    return model


def file_size(obj_saver) -> int:
    buf = io.BytesIO()
    obj_saver(buf)
    return buf.getbuffer().nbytes


def assert_models_bitwise_equal(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert same_bits(sa[k], sb[k]), k


@pytest.mark.parametrize("per_channel", [False, True])
def test_binarized_linear_stack_file_is_25x_smaller_and_exact(per_channel):
    torch.manual_seed(0)
    model = binarize_(Net(), per_channel)
    plain = file_size(lambda f: torch.save(model.state_dict(), f))
    buf = io.BytesIO()
    report = save_binary(model, buf)
    packed = buf.getbuffer().nbytes
    assert plain >= 25 * packed, (plain, packed)
    assert report.raw_bytes >= 25 * report.packed_bytes
    assert set(report.quantized()) == {f"body.{i}.weight" for i in range(4)}
    buf.seek(0)
    blob = torch.load(buf, weights_only=True)  # a safe format
    assert blob["format"] == FORMAT and blob["tensors"]["body.0.weight"]["codes"].dtype == torch.uint8
    buf.seek(0)
    fresh = Net()
    assert load_binary(buf, fresh) is fresh
    assert_models_bitwise_equal(model, fresh)


def test_mixed_model_with_buffers_roundtrips_through_a_file(tmp_path):
    torch.manual_seed(1)
    model = Net(width=24, depth=3, bias=True, norm=True).double()
    binarize_(model, per_channel=True)
    model.body[1].running_mean.normal_()
    model.body[1].num_batches_tracked.fill_(7)
    with torch.no_grad():
        model.body[2].weight.copy_(from_levels((-1.0, 0.0, 1.0), (24, 24), torch.float64))
    path = tmp_path / "model.pt"
    report = save_binary(model, path)
    assert report.entries["body.2.weight"][:2] == ("levels", 2)
    assert report.entries["body.0.weight"][:2] == ("sign", 1)
    assert report.entries["body.0.bias"][0] == "raw"
    fresh = Net(width=24, depth=3, bias=True, norm=True).double()
    load_binary(str(path), fresh)
    assert_models_bitwise_equal(model, fresh)


def test_mismatched_model_raises_and_changes_nothing(tmp_path):
    model = binarize_(Net(width=16, depth=2))
    path = tmp_path / "m.pt"
    save_binary(model, path)
    for other in (Net(width=8, depth=2), Net(width=16, depth=3), Net(width=16, depth=2, bias=True),
                  Net(width=16, depth=2).double()):
        before = {k: v.clone() for k, v in other.state_dict().items()}
        with pytest.raises(ValueError, match="Invalid model"):
            load_binary(path, other)
        after = other.state_dict()
        assert all(same_bits(before[k], after[k]) for k in before)
    blob = torch.load(path, weights_only=True)
    del blob["tensors"]["body.1.weight"]["codes"]
    torch.save(blob, path)
    fresh = Net(width=16, depth=2)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match="malformed"):
        load_binary(path, fresh)
    assert all(same_bits(before[k], v) for k, v in fresh.state_dict().items())
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="Invalid file"):
        load_binary(path, Net(width=16, depth=2))
    with pytest.raises(TypeError, match="model"):
        save_binary({"w": torch.zeros(1)}, path)


def test_export_with_optimizer_writes_hard_weights_and_leaves_the_model_soft():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(8, 32), nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 4))
    opt = proxopt.optimizer("md-tanh-s", param_groups(model), lr=1e-2)
    model(torch.randn(16, 8)).square().mean().backward()
    opt.step()
    soft = {k: v.clone() for k, v in model.state_dict().items()}
    assert len(set(model[1].weight.flatten().tolist())) > 2
    buf = io.BytesIO()
    report = save_binary(model, buf, opt)
    assert report.entries["1.weight"][:2] == ("sign", 1) and report.entries["2.weight"][:2] == ("sign", 1)
    assert report.entries["0.weight"][0] == "raw"
    assert all(same_bits(soft[k], v) for k, v in model.state_dict().items())  # the model is as it was
    with opt.hard():
        hard = {k: v.clone() for k, v in model.state_dict().items()}
    buf.seek(0)
    fresh = nn.Sequential(nn.Linear(8, 32), nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 4))
    load_binary(buf, fresh)
    assert all(same_bits(hard[k], v) for k, v in fresh.state_dict().items())
    stranger = proxopt.optimizer("bc", [nn.Parameter(torch.randn(4, 4))], lr=1e-3)
    with pytest.raises(ValueError, match="not a parameter of the model"):
        save_binary(model, io.BytesIO(), stranger)
