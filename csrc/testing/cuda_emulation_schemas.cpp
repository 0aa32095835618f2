// The schemas of the emulated CUDA kernels' twins, `scangraph::<op>_cuda_emulated` (test only,
// tests/cuda_emulation.py): each public op's schema under the twin's name. The glue registers the
// kernels themselves as their CPU kernels (glue/cuda_context.h). The ops whose names start with
// "_" are CPU-only test entry points and have no CUDA kernel, so no twin.
#include <string>

#include "glue/torch_api.h"
#include "schemas.h"

SCANGRAPH_LIBRARY_FRAGMENT(m) {
  for (const char* schema : scangraph::kSchemas) {
    if (schema[0] == '_') continue;
    const std::string text(schema);
    const size_t name_end = text.find('(');
    m.def((text.substr(0, name_end) + "_cuda_emulated" + text.substr(name_end)).c_str());
  }
}
