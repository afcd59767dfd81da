// prequant/errors.h — the engine's typed exceptions.
//
// Every message names the node (layer) concerned and says what the user can do about it.
// The Python extension maps each type to an exception class of the same name in `prequant`
// (GraphError and InvalidRequestError derive from ValueError there).
#pragma once

#include <stdexcept>
#include <string>

namespace prequant {

// Base of all prequant errors.
class Error : public std::runtime_error {
 public:
  Error(const std::string& message, std::string node = {})
      : std::runtime_error(message), node_(std::move(node)) {}
  // The node (layer) the error is about, or empty.
  const std::string& node() const { return node_; }

 private:
  std::string node_;
};

// The graph handed to the engine breaks an invariant (duplicate names, shape mismatch, ...).
class GraphError : public Error { using Error::Error; };
// A model file cannot be read or written (malformed, truncated, oversized, missing data).
class ModelFormatError : public Error { using Error::Error; };
// A well-formed model uses something the engine does not support (opset, dtype, op form).
class UnsupportedError : public Error { using Error::Error; };
// A parameter's values make the transform meaningless (NaN/Inf, BN variance ≤ 0, eps 0).
class InvalidParameterError : public Error { using Error::Error; };
// A user-given fold pair or CLS set is not valid for this graph.
class InvalidRequestError : public Error { using Error::Error; };

}  // namespace prequant
