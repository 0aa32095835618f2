// Registers every op schema of csrc/schemas.h (the one list) in the scangraph namespace.
#include <torch/library.h>

#include "schemas.h"

TORCH_LIBRARY(scangraph, m) {
  for (const char* schema : scangraph::kSchemas) m.def(schema);
}

#ifndef SCANGRAPH_NO_PYTHON_MODULE
// `import scangraph._C` loads this library (and runs the registrations above); the module
// itself is empty, so the library needs no pybind11 and works with any Python ABI.
#include <Python.h>
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
#endif
