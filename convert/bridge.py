"""SignalForge's PyTorch bridge, run by convert.Bridge in a subprocess.

Reads one JSON request on stdin and writes one JSON reply on stdout:

    {"cmd": "export" | "reference" | "bench" | "check", "model": path, ...}

Nothing from the model file runs unless the request says "trust_pickle"
(signalforge convert --trust-pickle): a state dict is loaded with
torch.load(weights_only=True); a whole-model pickle is rebuilt by a
restricted unpickler that reaches only tensors, the supported torch.nn
modules and the user classes allowed by name (defined by --torch-module, or
kept as inert data); a TorchScript archive is read the same way for its
weights only (its TorchScript code is never compiled or run). The Go side
has checked the archive (one entry per name, one top-level folder, sizes and
pickle opcodes within bounds) and hands over a private copy of those bytes.
"""
import collections
import io
import json
import os
import pickle
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


class Refused(Exception):
    """The file needs PyTorch's unrestricted loading, which can run its code."""

    def __init__(self, what, refused_class=""):
        super().__init__(what)
        self.refused_class = refused_class


class Inert:
    """An object of a class the bridge never runs: its pickled state, as data."""

    pickled_name = ""

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:
            state = state[0]
        self.state = state if isinstance(state, dict) else {}


def passthrough(*args):
    return args[0] if args else None


def safe_set(*args):
    return set(args[0]) if args else set()


class RestrictedUnpickler(pickle._Unpickler):
    """The standard (pure Python) unpickler with every way to code closed.

    find_class never imports: it resolves names from an allow-list. REDUCE
    may call only the tensor rebuild helpers, OrderedDict and set; NEWOBJ
    may only create instances of the allowed classes (without calling their
    __init__); INST and OBJ, which call a class, are refused.
    """

    functions = {}
    classes = {}
    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module, name):
        key = "%s.%s" % (module, name)
        if key in self.functions:
            return self.functions[key]
        if key in self.classes:
            return self.classes[key]
        if module.startswith("__torch__."):  # TorchScript class: data only
            cls = type(name, (Inert,), {"pickled_name": key})
            self.classes[key] = cls
            return cls
        raise Refused("the file's pickle references %s" % key, key)

    def load_reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if not any(func is f for f in self.functions.values()):
            raise Refused("the file's pickle calls %r" % (func,))
        self.stack[-1] = func(*args)
    dispatch[pickle.REDUCE[0]] = load_reduce

    def _check_class(self, cls):
        if not any(cls is c for c in self.classes.values()):
            raise Refused("the file's pickle creates an instance of %r" % (cls,))

    def load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_class(cls)
        self.append(cls.__new__(cls))
    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self):
        self.stack.pop()
        self.stack.pop()
        cls = self.stack.pop()
        self._check_class(cls)
        self.append(cls.__new__(cls))
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def load_build(self):
        # Only the class's own __setstate__ (never one the pickle stored on
        # the instance), on instances of allowed classes and tensors.
        state = self.stack.pop()
        inst = self.stack[-1]
        if not (isinstance(inst, torch.Tensor) or any(type(inst) is c for c in self.classes.values())):
            raise Refused("the file's pickle sets the state of a %s" % type(inst).__name__)
        setstate = getattr(type(inst), "__setstate__", None)
        if setstate is not None:
            setstate(inst, state)
            return
        if isinstance(state, tuple) and len(state) == 2:
            state = state[0]
        if isinstance(state, dict):
            for k, v in state.items():
                if type(k) is not str:
                    raise Refused("the file's pickle sets a non-string attribute")
                inst.__dict__[k] = v
    dispatch[pickle.BUILD[0]] = load_build

    def _instantiate(self, klass, args):
        raise Refused("the file's pickle calls the class %r" % (klass,))


def restricted_module(req):
    """A pickle module for torch.serialization._load whose Unpickler is
    RestrictedUnpickler with this request's allow-list."""
    import __main__
    functions = {
        "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
        "torch._utils._rebuild_tensor": torch._utils._rebuild_tensor,
        "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
        "collections.OrderedDict": collections.OrderedDict,
        "builtins.set": safe_set,
        "__builtin__.set": safe_set,
    }
    for f in ("restore_type_tag", "build_intlist", "build_floatlist", "build_boollist",
              "build_tensorlist", "build_doublelist"):
        functions["torch.jit._pickle." + f] = passthrough
    classes = {}
    for name, file in (req.get("modules") or {}).items():
        classes["torch.nn.modules.%s.%s" % (file, name)] = getattr(nn, name)
    for full in req.get("allow_classes") or []:
        module, _, name = full.rpartition(".")
        cls = getattr(__main__, name, None) if module == "__main__" else None
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            cls = type(name, (Inert,), {"pickled_name": full})
        classes[full] = cls

    class Unpickler(RestrictedUnpickler):
        pass
    Unpickler.functions = functions
    Unpickler.classes = classes

    class Module:
        pass
    Module.Unpickler = Unpickler
    Module.__name__ = "signalforge_restricted"
    return Module


def read_archive(path):
    """The file's bytes, after checking (again, as the Go side did) that no
    two entries could be confused."""
    with open(path, "rb") as f:
        data = f.read()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = [i.filename for i in z.infolist()]
    folded = [n.lower() for n in names]
    if len(set(folded)) != len(folded):
        raise ValueError("ambiguous archive: two entries with the same name")
    if len({n.split("/", 1)[0] for n in names}) != 1:
        raise ValueError("ambiguous archive: entries under several top-level folders")
    return data


def load_file(req):
    """The file's top-level object, loaded without running anything from
    it unless the request trusts it: (object, is_torchscript)."""
    data = read_archive(req["model"])
    records = torch._C.PyTorchFileReader(io.BytesIO(data)).get_all_records()
    # torch.load itself takes an archive holding constants.pkl for
    # TorchScript and hands it to torch.jit.load, whatever weights_only says.
    script = "constants.pkl" in records or any(r.startswith("code/") for r in records)
    if req.get("trust_pickle"):
        if script:
            return torch.jit.load(io.BytesIO(data), map_location="cpu"), True
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False), False
        except AttributeError as e:
            raise ValueError("%s (the pickle references a class of your own: pass -torch-module FILE.py "
                             "defining it)" % e)
    if not script:
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), False
        except pickle.UnpicklingError:
            pass  # not a plain state dict: a whole-model pickle, rebuilt below
    reader = torch._C.PyTorchFileReader(io.BytesIO(data))
    return torch.serialization._load(reader, "cpu", restricted_module(req), encoding="utf-8"), script


MAX_DEPTH = 64


def attrs_of(o):
    if isinstance(o, nn.Module):
        return o.__dict__
    if isinstance(o, Inert):
        return getattr(o, "state", {})
    return None


def collect(o, prefix, out, depth=0):
    """The state dict of a module tree, named as state_dict() names it."""
    if depth > MAX_DEPTH:
        raise ValueError("modules nested deeper than %d" % MAX_DEPTH)
    d = attrs_of(o)
    if "_modules" in d:
        for group in ("_parameters", "_buffers"):
            for k, v in (d.get(group) or {}).items():
                if isinstance(v, torch.Tensor):
                    out[prefix + k] = v
        for k, v in (d.get("_modules") or {}).items():
            if attrs_of(v) is not None:
                collect(v, prefix + k + ".", out, depth + 1)
        return out
    for k, v in sorted(d.items()):
        if isinstance(v, torch.Tensor):
            out[prefix + k] = v
        elif attrs_of(v) is not None:
            collect(v, prefix + k + ".", out, depth + 1)
    return out


def has_inert(o, depth=0):
    if isinstance(o, Inert):
        return o
    if depth > MAX_DEPTH or not isinstance(o, nn.Module):
        return None
    for m in o._modules.values():
        found = has_inert(m, depth + 1)
        if found is not None:
            return found
    return None


def load_model(req):
    if req.get("torch_module"):
        # Classes a whole-model pickle references as __main__.X.
        import __main__
        ns = runpy.run_path(req["torch_module"], run_name="__signalforge_user__")
        for k, v in ns.items():
            if isinstance(v, type):
                setattr(__main__, k, v)
    obj, script = load_file(req)
    if req.get("spec"):
        state = obj
        if attrs_of(obj) is not None:
            state = collect(obj, "", {})
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
        model = build(req["spec"]["layers"], state, {})
    elif script and not req.get("trust_pickle"):
        raise Refused("a TorchScript archive's forward is TorchScript code from the file, which the bridge "
                      "runs only when trusted; give an architecture spec (-spec) to rebuild the model from its weights")
    else:
        model = obj
        inert = has_inert(obj)
        if inert is not None:
            raise ValueError("%s is a class of your own: its forward is needed; pass -torch-module FILE.py "
                             "defining it (with --allow-class %s), or give an architecture spec"
                             % (inert.pickled_name, inert.pickled_name))
        if not isinstance(model, nn.Module):
            raise ValueError("the file holds a %s, not a model; give an architecture spec" % type(model).__name__)
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
    except Refused as e:
        json.dump({"error": str(e), "refused": True, "refused_class": e.refused_class}, sys.stdout)
    except Exception as e:
        fail("%s: %s" % (type(e).__name__, e))
