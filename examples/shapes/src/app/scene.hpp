#pragma once

#include <memory>
#include <string>
#include <vector>

#include "shape.hpp"

namespace app {

// A fixed set of shape specs plus `extra` generated ones (deterministic).
std::vector<std::string> scene_specs(int extra);

// Parse every spec; throws on the first bad one.
std::vector<std::unique_ptr<geo::Shape>> build_scene(const std::vector<std::string> &specs);

// Internal consistency checks on the geometry; returns the failures.
std::vector<std::string> self_check();

} // namespace app
