"""SignalForge's PyTorch bridge, run by convert.Bridge in a subprocess.

Reads one JSON request on stdin and writes one JSON reply on stdout:

    {"cmd": "export" | "reference" | "bench" | "check", "model": path, ...}

Unlike the Go loader, this runs PyTorch's own unpickler (torch.load), which
can execute code from the file: use it only on files you trust.
"""
import json
import os
import runpy
import statistics
import sys
import time
import zipfile


def fail(msg):
    json.dump({"error": msg}, sys.stdout)
    sys.exit(0)


try:
    import torch
    from torch import nn
except Exception as e:  # ImportError, or a broken installation
    fail("cannot import torch in %s: %s (on Debian: apt-get install python3-torch)" % (sys.executable, e))


class LastStep(nn.Module):
    def __init__(self, batch_first):
        super().__init__()
        self.batch_first = batch_first

    def forward(self, x):
        return x[:, -1] if self.batch_first else x[-1]


class RNNOutput(nn.Module):
    """An LSTM/GRU that returns only its output sequence, as in a spec."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0]


# Layer types that own no parameters or buffers: they never load weights, so
# a spec entry without "param" cannot hand them the whole state dict.
WEIGHTLESS = {"LeakyReLU", "GELU", "Softmax", "Flatten", "ReLU", "SiLU", "Tanh", "Sigmoid", "Identity",
              "Dropout", "LastStep", "Sequential"}


def sub_state(state, prefix):
    """The direct parameters of the leaf module at prefix ("" is the root).

    Leaf modules' own keys never contain a dot, so deeper keys ("0.weight"
    when the prefix is the root) belong to other layers and are left out,
    exactly as the Go converter looks up prefix + "weight".
    """
    p = prefix.rstrip(".") + "." if prefix else ""
    return {k[len(p):]: v for k, v in state.items() if k.startswith(p) and "." not in k[len(p):]}


def build(layers, state, ctx):
    mods = []
    for l in layers:
        t = l["type"]
        args = {k: v for k, v in l.items() if k not in ("type", "param", "layers")}
        sd = {} if t in WEIGHTLESS else sub_state(state, l.get("param") or "")
        if t == "Sequential":
            m = build(l.get("layers", []), state, ctx)
            mods.append(m)
            continue
        if t == "LastStep":
            mods.append(LastStep(ctx.get("batch_first", False)))
            continue
        if t == "Linear":
            w = sd["weight"]
            m = nn.Linear(w.shape[1], w.shape[0], bias="bias" in sd)
        elif t == "Conv1d":
            w = sd["weight"]
            g = args.get("groups", 1)
            m = nn.Conv1d(w.shape[1] * g, w.shape[0], w.shape[2], stride=args.get("stride", 1),
                          padding=args.get("padding", 0), dilation=args.get("dilation", 1), groups=g,
                          bias="bias" in sd)
        elif t == "BatchNorm1d":
            m = nn.BatchNorm1d(sd["running_mean"].numel(), eps=args.get("eps", 1e-5), affine="weight" in sd)
        elif t == "LayerNorm":
            shape = args.get("normalized_shape") or list(sd["weight"].shape)
            m = nn.LayerNorm(shape, eps=args.get("eps", 1e-5), elementwise_affine="weight" in sd)
        elif t in ("LSTM", "GRU"):
            layers_n = 0
            while "weight_ih_l%d" % layers_n in sd:
                layers_n += 1
            cls = nn.LSTM if t == "LSTM" else nn.GRU
            bf = args.get("batch_first", False)
            ctx["batch_first"] = bf
            rnn = cls(sd["weight_ih_l0"].shape[1], sd["weight_hh_l0"].shape[1], num_layers=layers_n,
                      bias="bias_ih_l0" in sd, batch_first=bf, bidirectional="weight_ih_l0_reverse" in sd)
            rnn.load_state_dict(sd)
            mods.append(RNNOutput(rnn))
            continue
        elif t == "LeakyReLU":
            m = nn.LeakyReLU(args.get("negative_slope", 0.01))
        elif t == "GELU":
            m = nn.GELU(approximate=args.get("approximate", "none"))
        elif t == "Softmax":
            m = nn.Softmax(dim=args.get("dim"))
        elif t == "Flatten":
            m = nn.Flatten(args.get("start_dim", 1), args.get("end_dim", -1))
        elif t in ("ReLU", "SiLU", "Tanh", "Sigmoid", "Identity", "Dropout"):
            m = getattr(nn, t)()
        else:
            raise ValueError("unsupported layer type %r" % t)
        if sd:
            m.load_state_dict(sd)
        mods.append(m)
    return nn.Sequential(*mods)


def is_torchscript(path):
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.split("/", 1)[-1].startswith("code/") or n.endswith("/constants.pkl") for n in z.namelist())
    except zipfile.BadZipFile:
        return False


def torch_load(path):
    try:
        return torch.load(path, map_location="cpu")
    except AttributeError as e:
        raise ValueError("%s (the pickle references a class of your own: pass -torch-module FILE.py "
                         "defining it)" % e)


def load_model(req):
    path = req["model"]
    if req.get("torch_module"):
        # Classes a whole-model pickle references as __main__.X.
        import __main__
        ns = runpy.run_path(req["torch_module"], run_name="__signalforge_user__")
        for k, v in ns.items():
            if isinstance(v, type):
                setattr(__main__, k, v)
    if req.get("spec"):
        if is_torchscript(path):
            state = torch.jit.load(path, map_location="cpu").state_dict()
        else:
            state = torch_load(path)
            if isinstance(state, nn.Module):
                state = state.state_dict()
            for key in ("state_dict", "model_state_dict", "model"):
                if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                    state = state[key]
        model = build(req["spec"]["layers"], state, {})
    elif is_torchscript(path):
        model = torch.jit.load(path, map_location="cpu")
    else:
        model = torch_load(path)
        if not isinstance(model, nn.Module):
            raise ValueError("%s holds a %s, not a model; give an architecture spec" % (path, type(model).__name__))
    model.eval()
    return model


def tensor_of(t):
    return torch.tensor(t["data"], dtype=torch.float32).reshape(t["shape"])


def main():
    req = json.load(sys.stdin)
    cmd = req["cmd"]
    if cmd == "check":
        json.dump({"torch": torch.__version__}, sys.stdout)
        return
    torch.set_num_threads(req.get("threads", 1))
    model = load_model(req)
    if cmd == "reference":
        with torch.no_grad():
            outs = model(*[tensor_of(t) for t in req["inputs"]])
        if isinstance(outs, (tuple, list)):
            outs = outs[0]
        json.dump({"outputs": [{"shape": list(outs.shape), "data": outs.flatten().tolist()}]}, sys.stdout)
    elif cmd == "export":
        shape = [d if d >= 0 else 2 for d in req["input_shape"]]
        dummy = torch.randn(*shape)
        axes_in = {i: ("batch" if i == req["batch_axis"] else "dim%d" % i)
                   for i, d in enumerate(req["input_shape"]) if d < 0}
        dynamic = {req["input_name"]: axes_in, req["output_name"]: {0: "batch"}} if axes_in else None
        with torch.no_grad():
            torch.onnx.export(model, dummy, req["out"], opset_version=req["opset"],
                              input_names=[req["input_name"]], output_names=[req["output_name"]],
                              dynamic_axes=dynamic)
        json.dump({"ok": True}, sys.stdout)
    elif cmd == "bench":
        rows = []
        iters, budget = req.get("iterations", 200), req.get("budget_seconds", 3.0)
        with torch.inference_mode():
            for case in req["cases"]:
                x = [tensor_of(t) for t in case["inputs"]]
                for _ in range(10):
                    model(*x)
                times = []
                start = time.perf_counter()
                while len(times) < iters and (len(times) < 5 or time.perf_counter() - start < budget):
                    t0 = time.perf_counter_ns()
                    model(*x)
                    times.append(time.perf_counter_ns() - t0)
                rows.append({"median_ns": statistics.median(times), "runs": len(times)})
        json.dump({"rows": rows}, sys.stdout)
    else:
        raise ValueError("unknown command %r" % cmd)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:
        fail("%s: %s" % (type(e).__name__, e))
