"""Property test: seeded random small PyTorch graphs through equalize_model (and the manual
scale_cls_sets) never change the FP32 function silently.

A graph is a random composition, in 1-d, 2-d or 3-d, of: convs (plain, grouped, depthwise,
transposed; padded or not; with or without bias), batch norms (after a layer, or before one),
ReLU / ReLU6 / LeakyReLU / PReLU (one or per-channel slope) / Hardtanh(0, 6), zero padding,
max and average pools (count_include_pad both ways), residual adds, concats, and — per test —
a conv called twice with its own BN each, two convs sharing one Parameter, and nn.Linear applied
to a 3-d/4-d/5-d tensor (it contracts the last axis, not the channels). Random weights, BN
statistics var in [1e-2, 10], non-zero means, negative γ; computed in float64.

For every graph and options (relu6 'bound'/'skip'/'replace', high-bias absorption on/off, with
or without prepare_model), exactly one of:
- the output is kept to 1e-5 relative;
- the result reports an approximate step (a ReLU6 replaced, bias absorbed); its measured FP32
  SQNR is recorded — with the exact options (bound, no absorption) the same graph must be kept;
- a prequant.Error is raised with a message, and the model is left as it was.
Every declined candidate carries a reason. Anything else is a silent change, and fails.
Besides: relu6='replace' rewrites only ReLU6s between scaled layers; high-bias absorption never
moves bias into a padded layer or through a padded average pool; manual sets given to
scale_cls_sets (overlapping, or one given twice) keep the function or raise.

Seeds are fixed, so CI is deterministic."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
from torch import nn

import prequant
from prequant.torch import prepare_model
from prequant.torch.cross_layer_equalization import CrossLayerScaling, equalize_model

from torch_cle_models import randomize_bn

pytestmark = pytest.mark.usefixtures("single_thread_torch")

TOL = 1e-5
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
MAXPOOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
AVGPOOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
ZEROPAD = {1: nn.ZeroPad1d, 2: nn.ZeroPad2d, 3: nn.ZeroPad3d}


# ---- random graphs -----------------------------------------------------------------------------

class RandomNet(nn.Module):
    """Runs a fixed plan of steps; torch.fx unrolls the loop into a flat graph.

    Steps: ("m", name) apply a module; ("save", k) / ("add", k) a residual; ("cat", a, b) two
    branches concatenated on channels; ("twice", conv, bn1, act1, bn2, act2) one conv called twice."""

    def __init__(self, plan: list, modules: dict):
        super().__init__()
        self.plan = plan
        self.layers = nn.ModuleDict(modules)

    def forward(self, x):
        saved = {}
        for step in self.plan:
            kind = step[0]
            if kind == "m":
                x = self.layers[step[1]](x)
            elif kind == "save":
                saved[step[1]] = x
            elif kind == "add":
                x = x + saved[step[1]]
            elif kind == "cat":
                x = torch.cat([self.layers[step[1]](x), self.layers[step[2]](x)], 1)
            elif kind == "twice":
                conv = self.layers[step[1]]
                x = self.layers[step[3]](self.layers[step[2]](conv(x)))
                x = self.layers[step[5]](self.layers[step[4]](conv(x)))
        return x


class Builder:
    def __init__(self, rng: random.Random, dim: int, features: set):
        self.rng, self.dim, self.features = rng, dim, features
        self.plan: list = []
        self.modules: dict = {}
        self.c = rng.choice([3, 4])
        self.size = rng.choice([5, 6, 7]) if dim < 3 else rng.choice([4, 5])

    def add(self, module: nn.Module) -> str:
        name = f"l{len(self.modules)}"
        self.modules[name] = module
        return name

    def step(self, module: nn.Module) -> None:
        self.plan.append(("m", self.add(module)))

    def activation(self) -> nn.Module:
        r = self.rng.randrange(6)
        return [nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(0.1), nn.PReLU(1, init=0.2),
                nn.PReLU(self.c, init=0.3), nn.Hardtanh(0.0, 6.0)][r]

    def conv(self, c_out: int | None = None, transposed: bool = False, padded: bool | None = None) -> nn.Module:
        rng, c = self.rng, self.c
        c_out = c_out or rng.choice([4, 6, 8])
        k = rng.choice([1, 3])
        padded = (k == 3 and (self.size < 5 or rng.random() < 0.6)) if padded is None else (padded and k == 3)
        r = rng.random()
        groups = 1
        if r < 0.25:  # depthwise (channel multiplier 1 or 2)
            groups, c_out = c, c * rng.choice([1, 2])
        elif r < 0.4 and c % 2 == 0 and c_out % 2 == 0:
            groups = 2
        pad = 1 if padded else 0
        cls = CONV_T[self.dim] if transposed else CONV[self.dim]
        m = cls(c, c_out, k, padding=pad, groups=groups, bias=rng.random() < 0.5)
        if transposed:
            self.size += k - 1 - 2 * pad
        else:
            self.size -= k - 1 - 2 * pad
        self.c = c_out
        return m

    def conv_block(self, transposed: bool = False) -> None:
        self.step(self.conv(transposed=transposed))
        if self.rng.random() < 0.75:
            self.step(BN[self.dim](self.c))
        if self.rng.random() < 0.75:
            self.step(self.activation())

    def build(self) -> RandomNet:
        rng = self.rng
        ops = ["conv"] * 5 + ["tconv", "bn", "act", "pool", "res", "cat", "pad"]
        ops += ["twice"] * 3 if "shared_module" in self.features else []
        ops += ["shared_param"] * 3 if "shared_param" in self.features else []
        ops += ["linear_nd"] * 3 if "linear_nd" in self.features else []
        for _ in range(rng.randint(3, 8)):
            op = rng.choice(ops)
            if op in ("conv", "tconv"):
                self.conv_block(transposed=op == "tconv" and self.size <= 6)
            elif op == "bn":  # a BN before a layer (BN → conv folding)
                self.step(BN[self.dim](self.c))
                self.conv_block()
            elif op == "act":
                self.step(self.activation())
            elif op == "pool":
                if rng.random() < 0.5:
                    self.step(MAXPOOL[self.dim](3, 1, 1))
                else:
                    self.step(AVGPOOL[self.dim](3, 1, 1, count_include_pad=rng.random() < 0.5))
            elif op == "pad":
                self.step(ZEROPAD[self.dim](1))
                self.size += 2
                self.step(self.conv(padded=False))
            elif op == "res":
                k = f"s{len(self.plan)}"
                self.plan.append(("save", k))
                c = self.c
                self.step(self.conv(c_out=c, padded=True))
                if rng.random() < 0.7:
                    self.step(BN[self.dim](self.c))
                if self.c == c:
                    self.plan.append(("add", k))
                if rng.random() < 0.5:
                    self.step(nn.ReLU())
            elif op == "cat":
                c, size = self.c, self.size
                a = self.add(self.conv(padded=True))
                c_a, self.c, self.size = self.c, c, size
                b = self.add(self.conv(padded=True))
                if self.size != size:  # a 1×1 and a 3×3 padded keep the size; anything else: skip
                    self.c, self.size = c, size
                    continue
                self.plan.append(("cat", a, b))
                self.c = c_a + self.c
            elif op == "twice":  # one conv called twice, each call with its own BN and activation
                conv = self.add(CONV[self.dim](self.c, self.c, 3, padding=1, bias=rng.random() < 0.5))
                names = [self.add(m) for m in (BN[self.dim](self.c), self.activation(),
                                               BN[self.dim](self.c), self.activation())]
                self.plan.append(("twice", conv, *names))
            elif op == "shared_param":  # two modules, one Parameter
                a = CONV[self.dim](self.c, self.c, 3, padding=1)
                b = CONV[self.dim](self.c, self.c, 3, padding=1)
                b.weight = a.weight
                self.step(a)
                self.step(BN[self.dim](self.c))
                self.step(nn.ReLU())
                self.step(b)
                self.step(BN[self.dim](self.c))
            elif op == "linear_nd":  # contracts the last (spatial) axis; the channel count
                # before it equals its in_features, to tempt pairing or folding by count alone
                self.step(CONV[self.dim](self.c, self.size, 1))
                self.c = self.size
                if rng.random() < 0.6:
                    self.step(BN[self.dim](self.c))
                if rng.random() < 0.5:
                    self.step(nn.ReLU())
                self.step(nn.Linear(self.size, self.size))
                if rng.random() < 0.5:
                    self.step(BN[self.dim](self.c))
            if self.size < 2:
                break
        # a head: flatten and a 2-d Linear (a pair candidate with the last conv only via pooling)
        self.step(nn.Flatten())
        self.step(nn.Linear(self.c * self.size ** self.dim, 5))
        return RandomNet(self.plan, self.modules)


def make_graph(seed: int, features: frozenset) -> tuple[RandomNet, torch.Tensor]:
    rng = random.Random(seed)
    dim = rng.choice([1, 2, 2, 3])
    torch.manual_seed(seed)
    b = Builder(rng, dim, features)
    c0, size0 = b.c, b.size
    net = randomize_bn(b.build(), seed).eval().double()
    with torch.no_grad():  # per-channel weight ranges that differ by orders of magnitude
        for m in net.modules():
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                m.weight.mul_(torch.exp(torch.randn(m.weight.shape[0], dtype=torch.float64))
                              .view(-1, *[1] * (m.weight.dim() - 1)))
    x = torch.randn(2, c0, *[size0] * dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return net, x


# ---- the property ------------------------------------------------------------------------------

def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


def sqnr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    noise = float(((out - ref) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float((ref ** 2).sum()) / noise)


def approximate_steps(result) -> list[str]:
    steps = [f"ReLU6 {e.node} replaced with ReLU" for e in list(result.activations.edits) + list(result.cls.activation_edits)
             if e.kind == "replaced_with_relu"]
    steps += [f"bias absorbed {a.layer1} -> {a.layer2}" for a in result.high_bias.absorbed]
    return steps


def check(seed: int, features: frozenset, prepare: str, relu6: str, absorb: bool) -> str | None:
    """None if the property holds, else what went wrong."""
    net, x = make_graph(seed, features)
    with torch.no_grad():
        ref = net(x)
    if prepare == "prepare":
        work = prepare_model(net)
    elif prepare == "prepare_shared":
        work = prepare_model(net, unroll_shared_weights=False)
    else:
        work = copy.deepcopy(net)
    try:
        result = equalize_model(work, relu6=relu6, absorb_high_bias=absorb)
    except prequant.Error as exc:
        with torch.no_grad():
            err = rel_err(work(x), ref)
        if not str(exc).strip() or err > TOL:
            return f"raised {type(exc).__name__} ({exc}) and left the output changed by {err:.3g}"
        return None
    d = result.to_dict()
    for sec in ("fold", "cls", "activations", "high_bias"):
        for dec in d[sec].get("declined", []):
            if not str(dec.get("reason", "")).strip():
                return f"a {sec} candidate declined without a reason: {dec}"
    with torch.no_grad():
        out = work(x)
    err = rel_err(out, ref)
    if err <= TOL:
        return None
    steps = approximate_steps(result)
    if steps:
        APPROXIMATE.append((seed, sqnr_db(out, ref), steps[0]))
        return None
    return (f"output changed by {err:.3g} relative (SQNR {sqnr_db(out, ref):.1f} dB) with nothing "
            f"reported as approximate; folded {len(d['fold']['folded'])}, sets {len(d['cls']['sets'])}")


APPROXIMATE: list = []  # (seed, FP32 SQNR in dB, the step reported) of every approximate run
OPTIONS = [("bound", False), ("skip", False), ("replace", False), ("bound", True), ("replace", True)]


def sweep(seeds, features: frozenset, prepares: tuple) -> list[str]:
    failures = []
    for seed in seeds:
        prepare = prepares[seed % len(prepares)]
        relu6, absorb = OPTIONS[seed % len(OPTIONS)]
        for opts in dict.fromkeys([(relu6, absorb), ("bound", False)]):  # the exact options always, too
            why = check(seed, features, prepare, *opts)
            if why:
                failures.append(f"seed {seed} {sorted(features)} {prepare} relu6={opts[0]} "
                                f"high_bias={opts[1]}: {why}")
    return failures


def assert_none(failures: list[str], n: int) -> None:
    assert not failures, f"{len(failures)} runs on {n} graphs went wrong:\n" + "\n".join(failures[:8])


def test_random_graphs_keep_the_function():
    seeds = range(200)
    before = len(APPROXIMATE)
    assert_none(sweep(seeds, frozenset(), ("prepare", "none")), len(seeds))
    approximate = APPROXIMATE[before:]
    assert approximate, "no run changed the output: the approximate branch is not exercised"
    print(f"{len(approximate)} approximate runs; FP32 SQNR from {min(a[1] for a in approximate):.1f} dB")


def test_random_graphs_with_a_module_called_twice_prepared():
    seeds = range(1000, 1040)
    assert_none(sweep(seeds, frozenset({"shared_module"}), ("prepare",)), len(seeds))


def test_random_graphs_with_a_module_called_twice_not_unrolled():
    seeds = range(2000, 2040)
    assert_none(sweep(seeds, frozenset({"shared_module"}), ("none", "prepare_shared")), len(seeds))


def test_random_graphs_with_a_shared_parameter():
    seeds = range(3000, 3040)
    assert_none(sweep(seeds, frozenset({"shared_param"}), ("prepare", "none")), len(seeds))


def test_random_graphs_with_linear_on_nd_tensors():
    seeds = range(4000, 4040)
    assert_none(sweep(seeds, frozenset({"linear_nd"}), ("prepare", "none")), len(seeds))


# ---- relu6='replace' scope ------------------------------------------------------------------------

def replaced_outside_pairs(seed: int) -> list[str]:
    net, _ = make_graph(seed, frozenset())
    work = prepare_model(net)
    result = equalize_model(work, relu6="replace")
    between = {a for s in result.cls.sets for p in s.pairs for a in p.activations_between}
    return [f"seed {seed}: {e.node} replaced, in no scaled pair"
            for e in list(result.activations.edits) + list(result.cls.activation_edits)
            if e.kind == "replaced_with_relu" and e.node not in between]


def test_relu6_replace_only_between_scaled_layers():
    failures = [f for seed in range(5000, 5060) for f in replaced_outside_pairs(seed)]
    assert_none(failures, 60)


# ---- high-bias absorption never moves bias across a padded border ----------------------------------

def absorbed_across_padding(seed: int) -> tuple[list[str], list[str]]:
    """(absorptions into a padded layer2, absorptions through a padded average pool): both are
    inexact at the borders (the padding sees zeros, not the moved bias) and must be declined."""
    net, _ = make_graph(seed, frozenset())
    work = prepare_model(net)
    result = equalize_model(work, absorb_high_bias=True)
    modules = dict(work.named_modules())
    between = {(p.layer1, p.layer2): list(p.activations_between) for s in result.cls.sets for p in s.pairs}
    padded, pooled = [], []
    for a in result.high_bias.absorbed:
        if any(p != 0 for p in modules[a.layer2].padding):
            padded.append(f"seed {seed}: bias absorbed into padded {a.layer2}")
        for name in between.get((a.layer1, a.layer2), []):
            pool = modules.get(name)
            if isinstance(pool, nn.modules.pooling._AvgPoolNd) and pool.count_include_pad and pool.padding:
                pooled.append(f"seed {seed}: bias absorbed {a.layer1} -> {a.layer2} through padded {name}")
    return padded, pooled


def test_high_bias_absorption_declines_a_padded_layer2():
    assert_none([f for seed in range(8000, 8100) for f in absorbed_across_padding(seed)[0]], 100)


def test_high_bias_absorption_declines_a_padded_average_pool():
    assert_none([f for seed in range(8000, 8100) for f in absorbed_across_padding(seed)[1]], 100)


# ---- manual CLS sets, overlapping and repeated ------------------------------------------------------

def chain(seed: int) -> tuple[nn.Sequential, torch.Tensor, list]:
    """conv → act → conv → act → ... (2-d, padded 3×3 or 1×1), and its adjacent conv pairs."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    c, layers, convs = 4, [], []
    for i in range(rng.randint(3, 5)):
        conv = nn.Conv2d(c, c, rng.choice([1, 3]), padding="same", bias=rng.random() < 0.7)
        layers.append(conv)
        convs.append(conv)
        layers.append([nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(0.1), nn.Identity()][rng.randrange(4)])
    net = nn.Sequential(*layers[:-1]).eval().double()
    with torch.no_grad():
        for conv in convs:
            conv.weight.mul_(torch.exp(2 * torch.randn(c, 1, 1, 1, dtype=torch.float64)))
    x = 3 * torch.randn(2, c, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return net, x, [(a, b) for a, b in zip(convs, convs[1:])]


def check_manual(seed: int, repeats: bool) -> str | None:
    rng = random.Random(seed)
    net, x, pairs = chain(seed)
    with torch.no_grad():
        ref = net(x)
    if repeats:
        sets = [rng.choice(pairs) for _ in range(rng.randint(2, 4))]
        sets.sort(key=lambda p: next(i for i, q in enumerate(pairs) if q is p))
        if len({id(p[0]) for p in sets}) == len(sets):
            sets.append(sets[-1])  # at least one set given twice
    else:
        sets = list(pairs)  # overlapping: each conv in two sets, each set once
    try:
        CrossLayerScaling.scale_cls_sets(sets, model=net)
    except prequant.Error as exc:
        with torch.no_grad():
            err = rel_err(net(x), ref)
        return None if err <= TOL and str(exc).strip() else f"seed {seed}: raised and changed the output by {err:.3g}"
    with torch.no_grad():
        err = rel_err(net(x), ref)
        out = net(x)
    return None if err <= TOL else f"seed {seed}: output changed by {err:.3g} (SQNR {sqnr_db(out, ref):.1f} dB)"


def test_manual_overlapping_sets_keep_the_function():
    failures = [f for seed in range(6000, 6040) if (f := check_manual(seed, repeats=False))]
    assert_none(failures, 40)


def test_manual_repeated_sets_keep_the_function_or_raise():
    failures = [f for seed in range(7000, 7040) if (f := check_manual(seed, repeats=True))]
    assert_none(failures, 40)
