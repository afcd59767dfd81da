// onnx_read_patterns.cpp — multi-node ONNX forms the reader maps onto one IR node, and the
// constant-foldable values node parameters may be given as.
//
// Before: the indexed graph (Reader::index_graph: producers, use counts, Constant and Identity
//         nodes); no IR node yet.
// After:  gate_of_ names each outer Mul that is one x·g(x) activation (SiLU, HardSwish, GELU with
//         Erf) with the nodes it absorbs; fused_add_ names each MatMul whose Add of a bias joins
//         it (one Linear). constant_values() folds a tensor to its numbers where it can.
// Preconditions: every tensor between the parts of a pattern is read once (use_count_ == 1), so
//         absorbing the parts hides no other reader.
#include <algorithm>
#include <cmath>
#include <limits>

#include "onnx_reader.h"
#include "prequant/errors.h"

namespace prequant {
namespace onnx_detail {

static bool is_float_initializer_2d(const pb::TensorProto* t) {
  return t && t->dims_size() == 2 && (t->data_type() == kFloat || t->data_type() == kDouble);
}

// x·g(x) written as Mul(x, G(x)) or Mul(x, G(Mul(x, s))) with G = Sigmoid (SiLU) or HardSigmoid
// (alpha 1/6, beta 1/2: HardSwish) and s a constant, or GELU written with Erf (match_gelu_erf):
// one GatedActivation, owned by the outer Mul.
void Reader::find_gated_activations() {
  const int n = g_.node_size();
  auto plain = [&](int i, const char* op, int inputs) {
    const auto& m = g_.node(i);
    return default_domain(m) && m.op_type() == op && m.input_size() == inputs && m.output_size() == 1 &&
           implicit_[static_cast<size_t>(i)].empty() && !absorbed_[static_cast<size_t>(i)];
  };
  auto single_use = [&](const std::string& t) {
    const auto it = use_count_.find(t);
    return it != use_count_.end() && it->second == 1;
  };
  for (int i = 0; i < n; ++i) {
    if (!plain(i, "Mul", 2)) continue;
    const auto& m = g_.node(i);
    if (GateForm gelu; match_gelu_erf(i, gelu)) {
      for (int part : gelu.parts) absorbed_[static_cast<size_t>(part)] = true;
      gate_of_[i] = std::move(gelu);
      continue;
    }
    for (int k = 0; k < 2; ++k) {
      const std::string& x = m.input(k);
      const std::string& gt = m.input(1 - k);
      const auto p = producer_.find(gt);
      if (x.empty() || is_initializer(x) || p == producer_.end() || !single_use(gt)) continue;
      const int gi = p->second;
      GateForm form;
      if (plain(gi, "Sigmoid", 1)) {
        form.gate = Gate::Sigmoid;
      } else if (plain(gi, "HardSigmoid", 1) && std::abs(attr_float(g_.node(gi), "alpha", 0.2) - 1.0 / 6) < 1e-6 &&
                 std::abs(attr_float(g_.node(gi), "beta", 0.5) - 0.5) < 1e-6) {
        form.gate = Gate::HardSigmoid;
      } else {
        continue;
      }
      form.x = x;
      form.parts.push_back(gi);
      const std::string& z = g_.node(gi).input(0);
      if (z != x) {  // the scaled form: z = Mul(x, s)
        const auto q = producer_.find(z);
        if (q == producer_.end() || !single_use(z) || !plain(q->second, "Mul", 2)) continue;
        const auto& zm = g_.node(q->second);
        const int xk = zm.input(0) == x ? 0 : zm.input(1) == x ? 1 : -1;
        if (xk < 0) continue;
        const auto s = constant_values(zm.input(1 - xk), "the gate scale of '" + m.name() + "'");
        if (!s || s->empty()) continue;
        form.scale = *s;
        form.parts.push_back(q->second);
      }
      for (int part : form.parts) absorbed_[static_cast<size_t>(part)] = true;
      gate_of_[i] = std::move(form);
      break;
    }
  }
}

// GELU (erf) as torch.onnx (opset < 20) and most exporters write it, 0.5·x·(1 + Erf(x/√2)):
// `mul` is the last of two Muls whose three factors are x, Add(Erf(u), 1) and the constant 0.5,
// in any order and grouping, with u = Div(x, √2) or Mul(x, c). c = k/√2 is x·Φ(k·x): k = 1 is
// plain GELU, a per-channel k (the writer's scaled form) its gate scale. Every tensor between is
// read once, so the nodes become one GatedActivation owned by `mul`.
bool Reader::match_gelu_erf(int mul, GateForm& form) {
  auto op_at = [&](const std::string& t, const char* op, int inputs) -> const pb::NodeProto* {
    const auto p = producer_.find(t);
    const auto u = use_count_.find(t);
    if (p == producer_.end() || u == use_count_.end() || u->second != 1) return nullptr;
    const int i = p->second;
    const auto& m = g_.node(i);
    const bool ok = default_domain(m) && m.op_type() == op && m.input_size() == inputs && m.output_size() == 1 &&
                    implicit_[static_cast<size_t>(i)].empty() && !absorbed_[static_cast<size_t>(i)];
    return ok ? &m : nullptr;
  };
  auto index_of = [&](const std::string& t) { return producer_.at(t); };
  auto scalar = [&](const std::string& t, double want) {
    const auto v = is_initializer(t) || constant_node_.count(t) || identity_of_.count(t)
                       ? constant_values(t, "a constant of GELU '" + g_.node(mul).name() + "'")
                       : std::nullopt;
    return v && v->size() == 1 && std::abs((*v)[0] - want) <= 1e-6 * std::abs(want);
  };
  // The three factors: the outer Mul's two inputs, one of them expanded if it is a Mul read once.
  const auto& outer = g_.node(mul);
  std::vector<std::string> factors;
  int inner = -1;
  for (int k = 0; k < 2 && inner < 0; ++k)
    if (const auto* m = op_at(outer.input(k), "Mul", 2)) {
      inner = index_of(outer.input(k));
      factors = {outer.input(1 - k), m->input(0), m->input(1)};
    }
  if (inner < 0) return false;
  int half = -1, gate = -1;
  for (int k = 0; k < 3; ++k) {
    if (scalar(factors[static_cast<size_t>(k)], 0.5)) half = k;
    else if (op_at(factors[static_cast<size_t>(k)], "Add", 2)) gate = k;
  }
  if (half < 0 || gate < 0) return false;
  const std::string x = factors[static_cast<size_t>(3 - half - gate)];
  if (x.empty() || is_initializer(x)) return false;
  // Add(Erf(u), 1), either order
  const std::string& a = factors[static_cast<size_t>(gate)];
  const auto& add = g_.node(index_of(a));
  const int ek = op_at(add.input(0), "Erf", 1) ? 0 : op_at(add.input(1), "Erf", 1) ? 1 : -1;
  if (ek < 0 || !scalar(add.input(1 - ek), 1.0)) return false;
  const std::string& e = add.input(ek);
  const std::string& u = g_.node(index_of(e)).input(0);
  const auto* div = op_at(u, "Div", 2);
  const auto* scale_mul = div ? nullptr : op_at(u, "Mul", 2);
  std::vector<double> k;
  if (div && div->input(0) == x) {
    const auto d = constant_values(div->input(1), "the divisor of GELU '" + outer.name() + "'");
    if (!d || d->empty()) return false;
    for (double v : *d) k.push_back(std::sqrt(2.0) / v);
  } else if (scale_mul && (scale_mul->input(0) == x || scale_mul->input(1) == x)) {
    const int xk = scale_mul->input(0) == x ? 0 : 1;
    const auto c = constant_values(scale_mul->input(1 - xk), "the gate scale of GELU '" + outer.name() + "'");
    if (!c || c->empty()) return false;
    for (double v : *c) k.push_back(std::sqrt(2.0) * v);
  } else {
    return false;
  }
  if (std::any_of(k.begin(), k.end(), [](double v) { return !(v > 0) || !std::isfinite(v); })) return false;
  const bool unit = std::all_of(k.begin(), k.end(), [](double v) { return std::abs(v - 1.0) <= 1e-6; });
  if (!unit && k.size() == 1) return false;  // x·Φ(k·x) with one k ≠ 1: not a GELU of the model's making
  form.gate = Gate::GeluErf;
  form.x = x;
  form.scale = unit ? std::vector<double>{} : k;
  form.parts = {index_of(e), index_of(a), index_of(u), inner};
  return true;
}

void Reader::find_matmul_add() {
  const int n = g_.node_size();
  fused_add_.assign(static_cast<size_t>(n), -1);
  absorbed_.assign(static_cast<size_t>(n), false);
  std::unordered_map<std::string, int> reader;  // tensor -> the single node reading it
  for (int i = 0; i < n; ++i)
    for (const auto& t : g_.node(i).input()) reader[t] = i;
  for (int i = 0; i < n; ++i) {
    const auto& m = g_.node(i);
    if (!default_domain(m) || m.op_type() != "MatMul" || m.input_size() != 2 || m.output_size() != 1)
      continue;
    const auto* b = initializer(m.input(1));
    if (!is_float_initializer_2d(b) || is_initializer(m.input(0))) continue;
    const std::string& out = m.output(0);
    if (use_count_[out] != 1) continue;
    auto it = reader.find(out);
    if (it == reader.end()) continue;
    const auto& add = g_.node(it->second);
    if (!default_domain(add) || add.op_type() != "Add" || add.input_size() != 2 ||
        add.output_size() != 1 || !implicit_[static_cast<size_t>(it->second)].empty())
      continue;
    const int other = add.input(0) == out ? 1 : 0;
    if (add.input(1 - other) != out) continue;
    const auto* c = initializer(add.input(other));
    if (!c || c->dims_size() != 1 || c->dims(0) != b->dims(1) || c->data_type() != b->data_type())
      continue;
    fused_add_[static_cast<size_t>(i)] = it->second;
    absorbed_[static_cast<size_t>(it->second)] = true;
  }
}

// A Concat on axis 0 of constants is folded: the TorchScript exporter writes nn.Upsample's
// scales as Concat(Constant[1, 1], Constant[2, 2]) (HRNet's fuse layers). Row-major order makes
// a concatenation on axis 0 the concatenation of the flattened parts. One level only: the parts
// must be constants themselves (no walk over the graph, so no recursion on its depth).
std::optional<std::vector<double>> Reader::constant_values(const std::string& name,
                                                           const std::string& what) {
  if (auto v = single_constant(name, what)) return v;
  const auto p = producer_.find(through_identities(name));
  if (p == producer_.end()) return std::nullopt;
  const pb::NodeProto& c = g_.node(p->second);
  if (!default_domain(c) || c.op_type() != "Concat" || c.output_size() != 1 || c.input_size() == 0 ||
      attr_int(c, "axis", 0) != 0 || !implicit_[static_cast<size_t>(p->second)].empty())
    return std::nullopt;
  std::vector<double> all;
  for (const auto& part : c.input()) {
    const auto v = part.empty() ? std::nullopt : single_constant(part, what);
    if (!v) return std::nullopt;
    all.insert(all.end(), v->begin(), v->end());
  }
  return all;
}

std::optional<std::vector<double>> Reader::single_constant(const std::string& name,
                                                           const std::string& what) {
  if (const auto* t = initializer(name)) return decode_numeric(*t, what);
  auto it = constant_node_.end();
  std::string t = name;
  for (int depth = 0; depth < 64; ++depth) {
    it = constant_node_.find(t);
    if (it != constant_node_.end()) break;
    auto id = identity_of_.find(t);
    if (id == identity_of_.end()) break;
    t = id->second;
  }
  if (it == constant_node_.end()) return std::nullopt;
  const auto& c = g_.node(it->second);
  for (const auto& a : c.attribute()) {
    if (a.name() == "value" && a.has_t()) return decode_numeric(a.t(), what);
    if (a.name() == "value_float") return std::vector<double>{a.f()};
    if (a.name() == "value_int") return std::vector<double>{static_cast<double>(a.i())};
    if (a.name() == "value_floats") return std::vector<double>(a.floats().begin(), a.floats().end());
    if (a.name() == "value_ints") {
      std::vector<double> v;
      for (int64_t x : a.ints()) v.push_back(static_cast<double>(x));
      return v;
    }
  }
  return std::nullopt;
}

}  // namespace onnx_detail
}  // namespace prequant
