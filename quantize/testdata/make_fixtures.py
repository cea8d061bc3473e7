#!/usr/bin/python3
"""Builds the quantize package's test models with real PyTorch (Debian's torch 1.13).

Run from the repository root:  /usr/bin/python3 quantize/testdata/make_fixtures.py

Every model takes float32 input with a dynamic batch axis 0 and lists its
feature names in metadata_props["signalforge.features"]. Seeds are fixed so the
files are reproducible on one torch version.

With --out DIR it writes them to DIR instead (the Go tests do this to check
that the committed files are exactly what this script makes). With --big DIR
it also writes the benchmark-only models that are too large
to commit: DIR/mlp_512_1024_1024_1.onnx (4.2 MB).
"""
import os
import sys

import onnx
import torch
from torch import nn

OUT = os.path.dirname(os.path.abspath(__file__))
MARKET = ["rsi_14", "macd", "macd_signal", "bb_width", "atr_14", "obv_z", "ret_1", "ret_5",
          "ret_20", "vol_20", "skew_20", "volume_z", "hl_range", "gap", "mom_10", "stoch_k"]


def names(n):
    if n <= len(MARKET):
        return MARKET[:n]
    return ["f%03d" % i for i in range(n)]


def export(model, example, path, features, dynamic_axes):
    model.eval()
    full = os.path.join(OUT, path)
    torch.onnx.export(model, example, full, input_names=["input"], output_names=["output"],
                      dynamic_axes=dynamic_axes, opset_version=14, do_constant_folding=True)
    m = onnx.load(full)
    p = m.metadata_props.add()
    p.key = "signalforge.features"
    p.value = ",".join(features)
    onnx.checker.check_model(m)
    onnx.save(m, full)
    print(path, os.path.getsize(full), "bytes")


def mlp(sizes):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class LSTMForecaster(nn.Module):
    def __init__(self, n_in, hidden):
        super().__init__()
        self.lstm = nn.LSTM(n_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1, :])


class ConvForecaster(nn.Module):
    """Conv1d over time on [batch, steps, features], ReLU, mean, Linear."""

    def __init__(self, n_in, channels):
        super().__init__()
        self.conv = nn.Conv1d(n_in, channels, kernel_size=3, padding=1)
        self.head = nn.Linear(channels, 1)

    def forward(self, x):
        h = torch.relu(self.conv(x.transpose(1, 2)))
        return self.head(h.mean(dim=2))


class StepMLP(nn.Module):
    """Linear layers applied per time step of [batch, steps, features]
    (exported as MatMul + Add, not Gemm), then a mean over time."""

    def __init__(self, n_in, hidden):
        super().__init__()
        self.l1 = nn.Linear(n_in, hidden)
        self.l2 = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.l2(torch.relu(self.l1(x))).mean(dim=1)


def main():
    global OUT
    if len(sys.argv) == 3 and sys.argv[1] == "--out":
        OUT = sys.argv[2]
    batch = {"input": {0: "batch"}, "output": {0: "batch"}}

    # The product's reference MLP: 100-50-10.
    torch.manual_seed(1)
    export(mlp([100, 50, 10]), torch.randn(1, 100), "mlp_100_50_10.onnx", names(100), batch)

    # A small MLP over named market features, for the CSV/JSONL readers and the CLI.
    torch.manual_seed(2)
    export(mlp([8, 32, 16, 1]), torch.randn(1, 8), "mlp_small.onnx", names(8), batch)

    # Skewed output channels: channel j's weights scaled by 4**j, so one
    # per-tensor scale drowns the small channels; per-channel does not.
    torch.manual_seed(3)
    skew = nn.Linear(16, 8)
    with torch.no_grad():
        for j in range(8):
            skew.weight[j] *= 4.0 ** j
            skew.bias[j] *= 4.0 ** j
    export(skew, torch.randn(1, 16), "skewed.onnx", names(16), batch)

    # Built to fail an accuracy budget: the middle layer has one weight 2000x
    # larger than the rest, so per-tensor int8 rounds the others to zero. It
    # is negative on a post-ReLU input, so its channel is always cut by the
    # next ReLU: only the weight's quantization hurts, not any activation
    # range, and excluding that one node must fix the model.
    torch.manual_seed(4)
    bad = mlp([16, 32, 32, 1])
    with torch.no_grad():
        bad[2].weight[0, 0] = -2000.0 * bad[2].weight.abs().max()
    export(bad, torch.randn(1, 16), "gate_fail.onnx", names(16), batch)

    # LSTM(16->64) over 32 time steps + Linear head on the last step.
    torch.manual_seed(5)
    export(LSTMForecaster(16, 64), torch.randn(1, 32, 16), "lstm.onnx", names(16), batch)

    # A temporal convolution, for static QDQ around Conv.
    torch.manual_seed(6)
    export(ConvForecaster(16, 16), torch.randn(1, 32, 16), "conv.onnx", names(16), batch)

    # MatMul + Add instead of Gemm (a Linear on a 3-D input).
    torch.manual_seed(8)
    export(StepMLP(16, 32), torch.randn(1, 32, 16), "matmul.onnx", names(16), batch)

    # Calibration data for mlp_small.onnx (the examples in `signalforge
    # quantize -h`): 256 rows of N(0, 1) market features, one column each.
    torch.manual_seed(9)
    rows = torch.randn(256, 8).tolist()
    with open(os.path.join(OUT, "calib_mlp_small.csv"), "w") as f:
        f.write(",".join(names(8)) + "\n")
        for r in rows:
            f.write(",".join("%.6f" % v for v in r) + "\n")

    if len(sys.argv) == 3 and sys.argv[1] == "--big":
        OUT = sys.argv[2]
        torch.manual_seed(7)
        export(mlp([512, 1024, 1024, 1]), torch.randn(1, 512), "mlp_512_1024_1024_1.onnx", names(512), batch)


if __name__ == "__main__":
    main()
