"""Exports verified by each target tool's own executor (qonnx, onnxruntime, hls4ml C simulation,
plain PyTorch) against the project's quantized graph on the whole digits test split."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from qfx.graph import QGraph, trace
from qfx.passes.analysis import analyze
from qfx.passes.export import ExportError
from qfx.passes.export.api import export, verify
from qfx.passes.transforms.quantize import QuantizePass, quantizable_nodes
from qfx.zoo.data import load_dataset
from qfx.zoo.models import build_model
from qfx.zoo.train import train

DS = load_dataset("digits")
X = DS.test.x  # 360 samples


def cfg(dw: int, df: int, ww: int, wf: int, bw: int, bf: int) -> dict:
    return {
        "name": "integer",
        "data_in_width": dw,
        "data_in_frac_width": df,
        "weight_width": ww,
        "weight_frac_width": wf,
        "bias_width": bw,
        "bias_frac_width": bf,
    }


# every node quantized, widths without a native ONNX type (3, 5, 6, 7, 12) included; a ReLU's
# output frac equals the data_in frac of the layer reading it (so hls4ml can express the pair exactly)
ALL = {
    "linear": cfg(8, 4, 6, 4, 12, 6),
    "conv2d": cfg(8, 4, 5, 3, 12, 6),
    "batch_norm1d": cfg(7, 3, 8, 5, 10, 5),
    "batch_norm2d": cfg(7, 3, 8, 5, 10, 5),
    "relu": cfg(6, 4, 8, 4, 8, 4),
    "add": cfg(9, 4, 8, 4, 8, 4),
}


def all_config(g: QGraph) -> dict:
    present = set(quantizable_nodes(g).values())
    return {"by": "type", **{t: c for t, c in ALL.items() if t in present}}


def partial_config(g: QGraph) -> dict:
    """Mixed: only the Linear/Conv layers (alternating widths), everything else float."""
    names = [n for n, t in quantizable_nodes(g).items() if t in ("linear", "conv2d")]
    return {"by": "name", **{n: cfg(8, 5, 4 + 2 * (i % 2), 3 + i % 2, 8, 4) for i, n in enumerate(names)}}


_CACHE: dict[str, QGraph] = {}


def float_graph(name: str) -> QGraph:
    if name not in _CACHE:
        torch.manual_seed(0)
        m = build_model(name, DS.num_features, DS.num_classes, image_shape=DS.image_shape)
        train(m, DS, epochs=2, progress=False)
        _CACHE[name] = analyze(trace(m.eval(), X[:8]))
    return _CACHE[name]


def quantized(name: str, which: str) -> QGraph:
    g = float_graph(name)
    return QuantizePass(all_config(g) if which == "all" else partial_config(g))(g).graph


def check(agreement: dict, which: str, min_class: float = 0.999) -> None:
    if which == "all":
        assert agreement["bit_identical"], agreement
    else:
        # float nodes: within the stated tolerance, relative to the outputs' magnitude (the noise rows reach 64x)
        assert (
            agreement["ok"] and agreement["required"].startswith("|diff| <=") and agreement["same_class"] >= min_class
        ), agreement


@pytest.mark.parametrize("which", ["all", "partial"])
@pytest.mark.parametrize("name", ["jsc-tiny", "jsc-toy", "jsc-s", "cnn"])
def test_qonnx_and_qdq_match_on_test_split(name, which, tmp_path):
    q = quantized(name, which)
    if which == "all":
        assert all(m.quantized for m in q.metas() if m.name in quantizable_nodes(q))
    from qfx.passes.export.api import verification_inputs

    x = verification_inputs(X, 1000)  # the test split, then noise reaching every saturation bound
    e = export(q, "qonnx", tmp_path / "qonnx", batch=len(x))  # qonnx wants a fixed batch
    from qonnx.core.modelwrapper import ModelWrapper

    mw = ModelWrapper(str(e.path))  # loads, and was shape-inferred + cleaned by qonnx
    assert any(n.op_type == "Quant" for n in mw.graph.node)
    check(verify(e, q, x), which)
    e = export(q, "onnx-qdq", tmp_path / "qdq")
    check(verify(e, q, x), which)


@pytest.mark.slow  # g++ compiles hls4ml's C simulation
@pytest.mark.parametrize("name", ["jsc-tiny", "jsc-toy", "jsc-s"])
def test_hls4ml_c_simulation(name, tmp_path):
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed: hls4ml's C simulation cannot be compiled")
    q = quantized(name, "all")
    e = export(q, "hls4ml", tmp_path / "all")
    assert verify(e, q, X)["bit_identical"], e.agreement
    assert (tmp_path / "all" / "firmware" / "parameters.h").is_file()
    q = quantized(name, "partial")
    e = export(q, "hls4ml", tmp_path / "partial")
    a = verify(e, q, X)
    assert a["same_class"] >= 0.99, a
    assert any("float" in n or "does not quantize" in n for n in e.notes)  # says why not all bits agree


def plain_torch_reader(path, x: torch.Tensor) -> torch.Tensor:
    """What a user without this project writes from the documented layout (linear/affine/relu chains)."""
    ck = torch.load(path, weights_only=True)
    tensors, man = ck["tensors"], ck["manifest"]

    def value(role: str, lay: dict) -> torch.Tensor | None:
        key, p = lay["tensors"].get(role), lay["precision"].get(role)
        if key is None:
            return None
        return tensors[key].double() * 2.0 ** -p["frac"] if p else tensors[key].double()

    def fq(v: torch.Tensor, p: dict | None) -> torch.Tensor:
        if p is None:
            return v
        lo, hi = (-(2 ** (p["width"] - 1)), 2 ** (p["width"] - 1) - 1) if p["signed"] else (0, 2 ** p["width"] - 1)
        return torch.fake_quantize_per_tensor_affine(v.float(), 2.0 ** -p["frac"], 0, lo, hi).double()

    h = x.double()
    for lay in man["layers"]:
        p = lay["precision"]
        if lay["op"] == "linear":
            h = F.linear(fq(h, p.get("data_in")), value("weight", lay), value("bias", lay))
        elif lay["op"] == "affine":
            h = fq(h, p.get("data_in")) * value("weight", lay) + value("bias", lay)
        elif lay["op"] == "relu":
            h = fq(torch.relu(h), p.get("data_out"))
        h = h.float().double()  # the graph computes in float32
    return h.float()


@pytest.mark.parametrize("which", ["all", "partial"])
@pytest.mark.parametrize("name", ["jsc-tiny", "jsc-s"])
def test_portable_checkpoint_readable_by_plain_torch(name, which, tmp_path):
    q = quantized(name, which)
    q.save(tmp_path / "g")  # QGraph.save writes the portable checkpoint beside its files
    path = tmp_path / "g" / "quantized.pt"
    ck = torch.load(path, weights_only=True)
    assert ck["format"] == "qfx-portable/1"
    quant_keys = [
        lay["tensors"][r] for lay in ck["manifest"]["layers"] for r in ("weight", "bias") if r in lay["precision"]
    ]
    assert quant_keys and all(not ck["tensors"][k].is_floating_point() for k in quant_keys)
    with torch.no_grad():
        ref = q(X)
    out = plain_torch_reader(path, X)
    if which == "all":
        assert torch.equal(out, ref)
    else:
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    e = export(q, "torch", tmp_path / "t")  # the library's own reference reader agrees too
    check(verify(e, q, X), which)


def test_unsupported_ops_give_clear_errors(tmp_path):
    g = float_graph("transformer")
    q = QuantizePass({"by": "type", "linear": cfg(8, 4, 8, 4, 8, 4)})(g).graph
    for fmt in ("qonnx", "onnx-qdq", "torch"):
        with pytest.raises(ExportError, match=rf"{fmt}: node '\w+' \(.*\) cannot be exported; supported: linear"):
            export(q, fmt, tmp_path / fmt)
    with pytest.raises(ExportError, match="hls4ml: node .* cannot be exported; the hls4ml export supports chains"):
        export(quantized("cnn", "all"), "hls4ml", tmp_path / "h")
    g = float_graph("jsc-toy")
    wide = QuantizePass({"by": "type", "linear": cfg(20, 8, 8, 4, 8, 4)})(g).graph
    with pytest.raises(ExportError, match=r"onnx-qdq: node 'seq_blocks_2' data_in is quantized to 20 bits.*16 bits"):
        export(wide, "onnx-qdq", tmp_path / "w")
    e = export(wide, "qonnx", tmp_path / "wq", batch=len(X))  # QONNX Quant takes any width
    check(verify(e, wide, X), "partial")
    mf = {"name": "minifloat", "weight_width": 8, "weight_exponent_width": 4}
    mini = QuantizePass({"by": "type", "linear": mf})(g).graph
    with pytest.raises(ExportError, match="only integer fixed point can be exported"):
        export(mini, "qonnx", tmp_path / "m")


def test_cli_export_and_search_export(tmp_path, capsys):
    from qfx import cli

    q = quantized("jsc-toy", "all")
    q.save(tmp_path / "g")
    assert (
        cli.main(
            ["export", "--graph", str(tmp_path / "g"), "--format", "torch,onnx-qdq,qonnx", "--out", str(tmp_path / "x")]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("True") >= 3 and (tmp_path / "x" / "onnx-qdq" / "model.onnx").is_file()
    assert cli.main(["export", "--graph", str(tmp_path / "g"), "--format", "tflite", "--out", str(tmp_path)]) == 2
    assert (
        "unknown export format(s) ['tflite']; formats: qonnx, onnx-qdq, hls4ml, torch, verilog, vhdl, da4ml-hls"
        in capsys.readouterr().err
    )
    from search_helpers import ROOT

    args = ["search", "--config", str(ROOT / "configs" / "jsc_tiny_by_type.toml"), "--n-trials", "3", "--no-progress"]
    assert cli.main([*args, "--out", str(tmp_path / "s"), "--export", "onnx-qdq,torch"]) == 0
    out = capsys.readouterr().out
    assert "export of trial" in out
    written = list((tmp_path / "s" / "export").rglob("model.onnx")) + list((tmp_path / "s" / "export").rglob("*.pt"))
    assert len(written) >= 2


@pytest.mark.slow  # g++ compiles hls4ml's C simulation
def test_hls4ml_relu_requantized_at_another_frac_is_bit_exact(tmp_path):
    """A ReLU quantized at 8/3 feeding a Linear whose input is 8/4: two roundings/saturations; hls4ml gets an
    explicit cast layer (it used to keep the ReLU's type: 47-99% of rows agreed) — on 1,000 rows with
    saturating noise."""
    from qfx.passes.export.api import verification_inputs

    torch.manual_seed(0)
    g = analyze(trace(build_model("jsc-tiny", 16, 5).eval(), torch.randn(8, 16)))

    def c(f: int) -> dict:
        return {"config": cfg(8, f, 8, 4, 8, 4)}

    q = QuantizePass({"by": "name", "seq_blocks_0": c(4), "seq_blocks_1": c(3), "seq_blocks_2": c(4)})(g).graph
    x = verification_inputs(torch.randn(64, 16), 1000)
    with torch.no_grad():
        assert len({tuple(r) for r in q(x).tolist()}) > 500  # not a degenerate network
    e = export(q, "hls4ml", tmp_path / "hls")
    a = verify(e, q, x)
    assert a["bit_identical"], a
    assert any("explicit cast" in n for n in e.notes), e.notes


class _Aliased(torch.nn.Module):
    """``r = relu_(h); fc2(r + h)``: after the in-place ReLU, ``h`` holds relu(h)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 8)
        self.fc2 = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        r = torch.relu_(h)
        h += 0.5  # augmented assignment: in place as well
        return self.fc2(r + h)


@pytest.mark.parametrize("fmt", ["torch", "onnx-qdq", "qonnx"])
def test_inplace_aliasing_exported_as_the_model_computes_it(fmt, tmp_path):
    from qfx.passes.export.api import verification_inputs

    torch.manual_seed(0)
    g = analyze(trace(_Aliased().eval(), torch.randn(8, 16)))
    c = cfg(8, 4, 8, 4, 8, 4)
    q = QuantizePass({"by": "type", "linear": c, "relu": c, "add": c})(g).graph
    x = verification_inputs(torch.randn(8, 16), 1000 if fmt != "qonnx" else 200)
    a = verify(export(q, fmt, tmp_path / fmt), q, x)
    assert a["bit_identical"], a


@pytest.mark.slow  # g++ compiles hls4ml's C simulation
def test_hls4ml_project_reads_back_with_hls4ml_own_parser(tmp_path):
    from hls4ml.converters import parse_yaml_config

    q = quantized("jsc-tiny", "all")
    e = export(q, "hls4ml", tmp_path / "hls")
    cfg = parse_yaml_config(str(tmp_path / "hls" / "hls4ml_config.yml"))  # yaml.safe_load: no Python objects
    assert cfg["ProjectName"] == "qfx" and cfg["IOType"] == "io_parallel"
    layers = cfg["HLSConfig"]["LayerName"]
    assert layers == e.handle.config.config["HLSConfig"]["LayerName"]  # every precision as exported
    assert cfg["PytorchModel"].endswith("qfx_model.pt") and (tmp_path / "hls" / "qfx_model.pt").is_file()


@pytest.mark.slow  # hls4ml compiles its C simulation
def test_random_widths_2_to_16_per_node_bit_identical_through_every_executor(tmp_path):
    """Every node of jsc-s at its own width 2-16 (fracs anywhere in range, so ReLU fracs differ from their
    readers'), signed MAC inputs and unsigned ReLU outputs; 1,000 rows (test split + saturating noise) through
    qonnx's execute_onnx, onnxruntime, hls4ml's C simulation, the plain-torch reader and da4ml's interpreter."""
    import random

    from qfx.passes.export.api import verification_inputs

    rng = random.Random(7)
    g = float_graph("jsc-s")
    conf: dict = {"by": "name"}
    for n in quantizable_nodes(g):
        w = {r: rng.randint(2, 16) for r in ("data_in", "weight", "bias")}
        conf[n] = {"name": "integer", **{f"{r}_width": v for r, v in w.items()},
                   **{f"{r}_frac_width": rng.randint(0, v) for r, v in w.items()}}  # fmt: skip
    q = QuantizePass(conf)(g).graph
    widths = {p.width for m in q.metas() for p in m.precision.values()}
    fmts = {p.fmt for m in q.metas() for p in m.precision.values()}
    assert min(widths) <= 3 and max(widths) >= 14 and fmts == {"integer", "uinteger"}
    x = verification_inputs(X, 1000)
    for fmt in ("qonnx", "onnx-qdq", "hls4ml", "torch", "vhdl"):
        e = export(q, fmt, tmp_path / fmt, batch=len(x) if fmt == "qonnx" else None)
        a = verify(e, q, x)
        assert a["bit_identical"] and a["ok"] and a["samples"] == 1000, (fmt, a)


def test_linear_shape_inference_matches_qonnx_cleanup_and_large_models_verify(tmp_path, monkeypatch):
    """Above CLEANUP_LIMIT ONNX nodes, model_clean.onnx carries shapes from onnx's own inference (qonnx's cleanup
    is quadratic). Oracle: qonnx's cleanup gives every node the same output shape; and the model it writes runs
    bit-identically in qonnx's execute_onnx."""
    import collections

    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    from qfx.passes.export import onnx_export
    from qfx.passes.export.api import verification_inputs

    def shapes(model, shape_of):
        return collections.Counter((n.op_type, tuple(shape_of(n.output[0]) or ())) for n in model.graph.node)

    for name in ("jsc-tiny", "cnn"):
        m = onnx_export.to_onnx(quantized(name, "all"), "qonnx", 1)
        ours = onnx_export.shapes_inferred(m)
        infos = [*ours.graph.value_info, *ours.graph.output]
        vi = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in infos}
        theirs = cleanup_model(ModelWrapper(m))
        assert shapes(ours, vi.get) == shapes(theirs.model, theirs.get_tensor_shape), name
        assert all(o in vi for n in ours.graph.node for o in n.output)  # every tensor has its shape
    monkeypatch.setattr(onnx_export, "CLEANUP_LIMIT", 10)  # jsc-tiny's 15 nodes take the large-model path
    q = quantized("jsc-tiny", "all")
    x = verification_inputs(X, 1000)
    e = export(q, "qonnx", tmp_path / "q", batch=len(x))
    assert verify(e, q, x)["bit_identical"]
