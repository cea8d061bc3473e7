#!/usr/bin/python3
"""Builds the conversion test fixtures with real PyTorch.

Run with Debian's interpreter (torch 1.13):

    /usr/bin/python3 convert/testdata/make_fixtures.py [outdir]
    /usr/bin/python3 convert/testdata/make_fixtures.py --bench outdir   # benchmark models

For every case it writes <name>.pt (a whole-model pickle made by
torch.save(model), or a state dict / TorchScript archive plus
<name>.spec.json), and <name>.ref.json: a fixed input and PyTorch's eager
output for it (format documented in convert/reference.go). The weights are
seeded so the files are reproducible on one machine; TestRegenerate in
convert_test.go reruns this script and checks the Go converter against the
fresh outputs.
"""
import json
import os
import sys

import torch
from torch import nn

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
BATCH = 3


class Forecaster(nn.Module):
    """SignalForge's recurrent pattern: RNN over the sequence, last step, head."""

    def __init__(self, rnn, head):
        super().__init__()
        self.rnn = rnn
        self.head = head

    def forward(self, x):
        out, _ = self.rnn(x)
        last = out[:, -1] if self.rnn.batch_first else out[-1]
        return self.head(last)


def randomize_bn(bn):
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)


def write_ref(name, x, y, input_name="input"):
    ref = {
        "cases": [{
            "inputs": [{"name": input_name, "shape": list(x.shape), "data": [float(v) for v in x.flatten().tolist()]}],
            "outputs": [{"shape": list(y.shape), "data": [float(v) for v in y.flatten().tolist()]}],
        }]
    }
    with open(os.path.join(OUT, name + ".ref.json"), "w") as f:
        json.dump(ref, f, separators=(",", ":"))
        f.write("\n")


def write_spec(name, spec):
    with open(os.path.join(OUT, name + ".spec.json"), "w") as f:
        json.dump(spec, f, indent=1)
        f.write("\n")


def whole(name, model, x):
    model.eval()
    with torch.no_grad():
        y = model(x)
    torch.save(model, os.path.join(OUT, name + ".pt"))
    write_ref(name, x, y)


def recurrent(name, kind, in_size, hidden, layers, bidir, batch_first, seq=5, out=2):
    cls = nn.LSTM if kind == "LSTM" else nn.GRU
    rnn = cls(in_size, hidden, num_layers=layers, bidirectional=bidir, batch_first=batch_first)
    model = Forecaster(rnn, nn.Linear(hidden * (2 if bidir else 1), out)).eval()
    shape = (BATCH, seq, in_size) if batch_first else (seq, BATCH, in_size)
    x = torch.randn(*shape)
    with torch.no_grad():
        y = model(x)
    torch.save(model.state_dict(), os.path.join(OUT, name + ".pt"))
    write_spec(name, {
        "input": {"name": "input"},
        "layers": [
            {"type": kind, "param": "rnn", "num_layers": layers, "bidirectional": bidir,
             "batch_first": batch_first},
            {"type": "LastStep"},
            {"type": "Linear", "param": "head"},
        ],
    })
    write_ref(name, x, y)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(8)
    x8 = lambda: torch.randn(BATCH, 8)
    whole("linear", nn.Sequential(nn.Linear(8, 4)), x8())
    whole("relu", nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)), x8())
    whole("leakyrelu", nn.Sequential(nn.Linear(8, 6), nn.LeakyReLU(0.2), nn.Linear(6, 3)), x8())
    whole("gelu", nn.Sequential(nn.Linear(8, 6), nn.GELU(), nn.Linear(6, 3)), x8())
    whole("gelu_tanh", nn.Sequential(nn.Linear(8, 6), nn.GELU(approximate="tanh"), nn.Linear(6, 3)), x8())
    whole("silu", nn.Sequential(nn.Linear(8, 6), nn.SiLU(), nn.Linear(6, 3)), x8())
    whole("tanh", nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)), x8())
    whole("sigmoid", nn.Sequential(nn.Linear(8, 6), nn.Sigmoid(), nn.Linear(6, 3)), x8())
    whole("softmax", nn.Sequential(nn.Linear(8, 5), nn.Softmax(dim=-1)), x8())
    whole("dropout", nn.Sequential(nn.Linear(8, 6), nn.Dropout(0.5), nn.Identity(), nn.Linear(6, 3)), x8())
    whole("flatten", nn.Sequential(nn.Flatten(), nn.Linear(8, 3)), torch.randn(BATCH, 2, 4))
    bn = nn.BatchNorm1d(6)
    randomize_bn(bn)
    whole("batchnorm1d", nn.Sequential(nn.Linear(8, 6), bn, nn.ReLU(), nn.Linear(6, 3)), x8())
    ln = nn.LayerNorm(6)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.5, 0.5)
    whole("layernorm", nn.Sequential(nn.Linear(8, 6), ln, nn.Linear(6, 3)), x8())
    whole("conv1d", nn.Sequential(nn.Conv1d(3, 4, kernel_size=3, padding=1), nn.ReLU(),
                                  nn.Conv1d(4, 2, kernel_size=2, stride=2), nn.Flatten(), nn.Linear(10, 3)),
          torch.randn(BATCH, 3, 10))
    whole("nested", nn.Sequential(nn.Sequential(nn.Linear(8, 6), nn.Tanh()),
                                  nn.Sequential(nn.Linear(6, 4), nn.Sigmoid())), x8())

    # A state dict with a spec, and a TorchScript archive with the same spec.
    mlp = nn.Sequential(nn.Linear(8, 6), nn.LeakyReLU(0.1), nn.Linear(6, 2)).eval()
    x = x8()
    with torch.no_grad():
        y = mlp(x)
    torch.save(mlp.state_dict(), os.path.join(OUT, "mlp_state.pt"))
    write_spec("mlp_state", {"layers": [
        {"type": "Linear", "param": "0"},
        {"type": "LeakyReLU", "negative_slope": 0.1},
        {"type": "Linear", "param": "2"},
    ]})
    write_ref("mlp_state", x, y)
    torch.jit.trace(mlp, x).save(os.path.join(OUT, "mlp_script.pt"))
    write_spec("mlp_script", {"layers": [
        {"type": "Linear", "param": "0"},
        {"type": "LeakyReLU", "negative_slope": 0.1},
        {"type": "Linear", "param": "2"},
    ]})
    write_ref("mlp_script", x, y)

    # Tensors that are views: transposed, offset and strided, other dtypes.
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    views = {
        "transposed": base.t(),
        "offset_strided": base[1:, ::2],
        "half": torch.tensor([0.5, -2.0, 65504.0, 1e-7], dtype=torch.float16),
        "bfloat16": torch.tensor([1.5, -3.0], dtype=torch.bfloat16),
        "int64": torch.tensor([[1, -2], [3, 4]]),
        "float64": torch.tensor([0.1, 0.2], dtype=torch.float64),
        "scalar": torch.tensor(7.0),
    }
    torch.save(views, os.path.join(OUT, "views.pt"))
    with open(os.path.join(OUT, "views.json"), "w") as f:
        json.dump({k: {"shape": list(v.shape), "data": [float(x) for x in v.float().flatten().tolist()]}
                   for k, v in views.items()}, f, indent=0)
        f.write("\n")

    # A whole-model pickle of a custom class (__main__.Forecaster): Go reads
    # it as data with --allow-class and a spec; the bridge with this file as
    # --torch-module.
    model = Forecaster(nn.LSTM(4, 5, batch_first=True), nn.Linear(5, 2)).eval()
    x = torch.randn(BATCH, 5, 4)
    with torch.no_grad():
        y = model(x)
    torch.save(model, os.path.join(OUT, "custom_class.pt"))
    write_spec("custom_class", {"layers": [
        {"type": "LSTM", "param": "rnn", "batch_first": True},
        {"type": "LastStep"},
        {"type": "Linear", "param": "head"},
    ]})
    write_ref("custom_class", x, y)

    for kind in ("LSTM", "GRU"):
        k = kind.lower()
        recurrent(k, kind, 4, 6, 1, False, True)
        recurrent(k + "_2layer", kind, 4, 5, 2, False, True)
        recurrent(k + "_bidir", kind, 4, 5, 1, True, True)
        recurrent(k + "_seqfirst", kind, 4, 5, 1, False, False)
        recurrent(k + "_2layer_bidir", kind, 3, 4, 2, True, False)


def bench_models(out):
    """The benchmark models of the closing note (too big to commit)."""
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(8)
    torch.save(nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 10)).eval(),
               os.path.join(out, "mlp_100_50_10.pt"))
    torch.save(nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                             nn.Linear(1024, 1)).eval(), os.path.join(out, "mlp_512_1024_1024_1.pt"))
    model = Forecaster(nn.LSTM(16, 64, batch_first=True), nn.Linear(64, 1)).eval()
    torch.save(model.state_dict(), os.path.join(out, "lstm_16_64.pt"))
    with open(os.path.join(out, "lstm_16_64.spec.json"), "w") as f:
        json.dump({"layers": [{"type": "LSTM", "param": "rnn", "batch_first": True},
                              {"type": "LastStep"}, {"type": "Linear", "param": "head"}]}, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--bench":
        bench_models(sys.argv[2])
    else:
        main()
