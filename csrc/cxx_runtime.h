// Whether fastint._C runs on the process's one shared C++ runtime (libstdc++), as torch does (see cxx_runtime.cpp).
#pragma once

#include <string>

namespace fastint {

// Empty when this module uses the shared libstdc++; otherwise why it does not (the module's import refuses to load).
std::string private_cxx_runtime_reason();

}  // namespace fastint
