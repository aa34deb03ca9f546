// fastint::private_cxx_runtime_reason (see cxx_runtime.h).
//
// A toolchain that links libstdc++ statically (-static-libstdc++, as some g++ wrappers add on their own) gives
// fastint._C a private copy of the C++ runtime beside the shared libstdc++.so.6 that torch loaded. The two copies'
// locale and iostream state do not match (the more so with -Wl,-Bsymbolic-functions, Ubuntu's Python default, which
// binds this module's calls to its own copy while its data symbols resolve to the shared one): the first message
// formatted here, c10::str in a failing TORCH_CHECK (`ostream << int64_t`), then crashes (SIGSEGV in
// std::ostream::_M_insert<long> on a GPU machine) or silently loses its numbers. Nothing on the hot path formats
// text, so such a build passes every test of correct input and breaks on the first bad call.
//
// Detection without running the broken code: a libstdc++ function that user code never defines (std::locale::
// classic(), not inline, not a template) must resolve, from this module, to a library other than this module,
// both through this module's own symbol lookup (dlsym on its handle: the module first, then its dependencies) and
// through the address this module's code takes of it.
#include "cxx_runtime.h"

#if defined(__linux__)
#include <dlfcn.h>

#include <locale>
#endif

namespace fastint {

#if defined(__linux__)
namespace {

// Where `address` lies: the base address of the object that holds it (nullptr if none).
const void* object_of(const void* address) {
  Dl_info info{};
  return address != nullptr && dladdr(address, &info) != 0 ? info.dli_fbase : nullptr;
}

}  // namespace

std::string private_cxx_runtime_reason() {
  Dl_info self{};
  if (dladdr(reinterpret_cast<const void*>(&private_cxx_runtime_reason), &self) == 0 || self.dli_fname == nullptr) {
    return "";  // cannot tell: do not refuse a build for that
  }
  const void* taken = reinterpret_cast<const void*>(static_cast<const std::locale& (*)()>(&std::locale::classic));
  const void* looked_up = nullptr;
  if (void* handle = dlopen(self.dli_fname, RTLD_LAZY | RTLD_NOLOAD)) {
    looked_up = dlsym(handle, "_ZNSt6locale7classicEv");  // std::locale::classic()
    dlclose(handle);
  }
  if (object_of(taken) != self.dli_fbase && object_of(looked_up) != self.dli_fbase) return "";
  return std::string(self.dli_fname) +
         " contains its own copy of libstdc++ (it was linked with -static-libstdc++ or a compiler wrapper that adds "
         "it): its text formatting breaks beside the shared libstdc++ that torch uses (error messages crash or "
         "lose their numbers). Rebuild it linking libstdc++ dynamically (setup.py passes -lstdc++; see "
         "docs/build.md).";
}
#else
std::string private_cxx_runtime_reason() { return ""; }  // libstdc++ linked statically is a Linux toolchain's habit
#endif

}  // namespace fastint
