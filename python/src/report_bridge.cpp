// JSON text and indented listings of the plain data built by to_dict() (see report_bridge.h).
#include "report_bridge.h"

#include <cstdio>

#include <nanobind/stl/string.h>

namespace prequant::python {
namespace {

using namespace nb::literals;

bool is_scalar(nb::handle v) {
  return v.is_none() || nb::isinstance<nb::bool_>(v) || nb::isinstance<nb::int_>(v) ||
         nb::isinstance<nb::float_>(v) || nb::isinstance<nb::str>(v);
}

std::string scalar_text(nb::handle v) {
  if (nb::isinstance<nb::float_>(v)) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.6g", nb::cast<double>(v));
    return buf;
  }
  if (nb::isinstance<nb::bool_>(v)) return nb::cast<bool>(v) ? "yes" : "no";
  if (v.is_none()) return "-";
  return nb::cast<std::string>(nb::str(v));
}

// Results nest at most five levels deep, so recursion is bounded.
void emit(std::string& out, nb::handle v, const std::string& indent) {
  if (nb::isinstance<nb::dict>(v)) {
    for (auto [key, value] : nb::borrow<nb::dict>(v)) {
      out += indent + nb::cast<std::string>(nb::str(key)) + ":";
      if (is_scalar(value)) {
        out += " " + scalar_text(value) + "\n";
      } else if (nb::isinstance<nb::list>(value)) {
        nb::list l = nb::borrow<nb::list>(value);
        bool flat = true;
        for (nb::handle item : l) flat = flat && is_scalar(item);
        if (flat) {
          out += " [";
          bool first = true;
          for (nb::handle item : l) {
            out += (first ? "" : ", ") + scalar_text(item);
            first = false;
          }
          out += "]\n";
        } else {
          out += "\n";
          for (nb::handle item : l) {
            std::string sub;
            emit(sub, item, indent + "    ");
            // Mark each list item with a dash on its first line.
            if (sub.size() >= indent.size() + 2) sub.replace(indent.size() + 2, 2, "- ");
            out += sub;
          }
        }
      } else {
        out += "\n";
        emit(out, value, indent + "  ");
      }
    }
  } else {
    out += indent + scalar_text(v) + "\n";
  }
}

}  // namespace

std::string json_of(nb::handle data, int indent) {
  nb::object dumps = nb::module_::import_("json").attr("dumps");
  nb::object text = indent > 0 ? dumps(data, "indent"_a = indent) : dumps(data);
  return nb::cast<std::string>(text);
}

std::string listing_of(nb::handle data) {
  std::string out;
  emit(out, data, "");
  return out;
}

}  // namespace prequant::python
