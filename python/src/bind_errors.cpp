// The engine's exception types (errors.h) as Python exception classes of the same names.
//
//   Error(Exception)                       base of all prequant errors
//   GraphError(Error, ValueError)          the graph breaks an invariant
//   ModelFormatError(Error, ValueError)    a model file cannot be read or written
//   UnsupportedError(Error)                something the engine does not support
//   InvalidParameterError(Error, ValueError)  parameter values make a transform meaningless
//   InvalidRequestError(Error, ValueError) a given fold pair or CLS set is not valid
//
// Each instance carries `.node`, the layer the error is about ("" when none). The classes are
// defined in Python so that they can be raised from Python front ends with a node too:
// `raise prequant.InvalidRequestError("...", node="conv1")`.
#include <nanobind/eval.h>

#include "bindings.h"
#include "prequant/errors.h"

namespace prequant::python {
namespace {

constexpr const char* kErrorClasses = R"(
class Error(Exception):
    """Base of all prequant errors. ``node`` names the layer concerned, or is ''."""

    def __init__(self, message="", node=""):
        super().__init__(message)
        self.node = node

    def __reduce__(self):
        return (type(self), (str(self), self.node))


class GraphError(Error, ValueError):
    """The graph breaks an invariant the engine relies on."""


class ModelFormatError(Error, ValueError):
    """A model file cannot be read or written."""


class UnsupportedError(Error):
    """A well-formed model or argument uses something the engine does not support."""


class InvalidParameterError(Error, ValueError):
    """A parameter's values make the transform meaningless (NaN/Inf, variance <= 0, ...)."""


class InvalidRequestError(Error, ValueError):
    """A user-given fold pair or CLS set is not valid for this graph."""
)";

// Strong references to the classes, for the translator (they live as long as the module).
struct ErrorClasses {
  PyObject* error = nullptr;
  PyObject* graph = nullptr;
  PyObject* model_format = nullptr;
  PyObject* unsupported = nullptr;
  PyObject* invalid_parameter = nullptr;
  PyObject* invalid_request = nullptr;
};
ErrorClasses classes;

void raise(PyObject* cls, const Error& e) {
  nb::object instance = nb::borrow(cls)(nb::str(e.what()), nb::str(e.node().c_str()));
  PyErr_SetObject(cls, instance.ptr());
}

void translate(const std::exception_ptr& p, void*) {
  try {
    std::rethrow_exception(p);
  } catch (const GraphError& e) {
    raise(classes.graph, e);
  } catch (const ModelFormatError& e) {
    raise(classes.model_format, e);
  } catch (const UnsupportedError& e) {
    raise(classes.unsupported, e);
  } catch (const InvalidParameterError& e) {
    raise(classes.invalid_parameter, e);
  } catch (const InvalidRequestError& e) {
    raise(classes.invalid_request, e);
  } catch (const Error& e) {
    raise(classes.error, e);
  }
}

}  // namespace

void bind_errors(nb::module_& m) {
  nb::dict scope;
  scope["__builtins__"] = nb::module_::import_("builtins");
  // The classes present themselves as prequant.<Name>, where the package re-exports them.
  scope["__name__"] = "prequant";
  nb::exec(nb::str(kErrorClasses), scope);

  auto take = [&](const char* name) {
    nb::object cls = scope[name];
    m.attr(name) = cls;
    return cls.release().ptr();  // kept for the process's life, like the module itself
  };
  classes.error = take("Error");
  classes.graph = take("GraphError");
  classes.model_format = take("ModelFormatError");
  classes.unsupported = take("UnsupportedError");
  classes.invalid_parameter = take("InvalidParameterError");
  classes.invalid_request = take("InvalidRequestError");

  nb::register_exception_translator(translate);
}

}  // namespace prequant::python
