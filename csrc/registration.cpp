// Registers every op schema of csrc/schemas.h (the one list) in the scangraph namespace, on the
// regular API or the stable ABI (glue/torch_api.h).
#include "glue/torch_api.h"
#include "schemas.h"

SCANGRAPH_LIBRARY(m) {
  for (const char* schema : scangraph::kSchemas) m.def(schema);
}

#ifndef SCANGRAPH_NO_PYTHON_MODULE
// `import scangraph._C` loads this library (and runs the registrations above). The module holds
// one constant, TORCH_ABI ("regular" or "stable": the torch API the library was built on), so the
// library needs no pybind11 and works with any Python ABI.
#include <Python.h>
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* m = PyModule_Create(&module);
  if (m != nullptr && PyModule_AddStringConstant(m, "TORCH_ABI", SCANGRAPH_TORCH_ABI) != 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
#endif
