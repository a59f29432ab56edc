#include "scene.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <iterator>
#include <sstream>

namespace app {

std::vector<std::string> scene_specs(int extra)
{
    std::vector<std::string> specs{
        "circle unit 1",
        "circle disc 2.75",
        "rect door 0.9 2.1",
        "rect sheet 2.97 2.1",
        "square tile 1.7",
        "poly wedge 0,0 4,0 0,3",
        "poly kite 0,0 2,1 0,4 -2,1",
        "ngon stop 8 1.3",
        "ngon hex 6 2",
    };
    // Generated shapes: a small linear congruential sequence keeps them
    // deterministic without depending on <random> distributions.
    unsigned state = 12345u;
    auto next = [&state]() {
        state = state * 1103515245u + 12345u;
        return (state >> 8) % 1000u;
    };
    for (int i = 0; i < extra; ++i) {
        std::ostringstream os;
        unsigned a = next(), b = next();
        switch (i % 3) {
        case 0: os << "circle c" << i << ' ' << 0.5 + a / 400.0; break;
        case 1: os << "rect r" << i << ' ' << 0.5 + a / 300.0 << ' ' << 0.25 + b / 500.0; break;
        default: os << "ngon g" << i << ' ' << 3 + a % 9 << ' ' << 0.75 + b / 350.0; break;
        }
        specs.push_back(os.str());
    }
    return specs;
}

std::vector<std::unique_ptr<geo::Shape>> build_scene(const std::vector<std::string> &specs)
{
    std::vector<std::unique_ptr<geo::Shape>> shapes;
    shapes.reserve(specs.size());
    std::transform(specs.begin(), specs.end(), std::back_inserter(shapes), geo::parse_shape);
    return shapes;
}

std::vector<std::string> self_check()
{
    struct Case {
        const char *what;
        std::function<double()> got;
        double want;
        double tol;
    };
    const double pi = 3.14159265358979323846;
    std::vector<Case> cases{
        {"rect area", [] { return geo::parse_shape("rect r 3 4")->area(); }, 12.0, 1e-12},
        {"rect perimeter", [] { return geo::parse_shape("rect r 3 4")->perimeter(); }, 14.0, 1e-12},
        {"triangle area", [] { return geo::parse_shape("poly t 0,0 4,0 0,3")->area(); }, 6.0, 1e-12},
        {"triangle perimeter", [] { return geo::parse_shape("poly t 0,0 4,0 0,3")->perimeter(); }, 12.0, 1e-12},
        {"square ngon area", [] { return geo::parse_shape("ngon q 4 1")->area(); }, 2.0, 1e-12},
        {"1000-gon ~ circle area", [] { return geo::parse_shape("ngon c 1000 1")->area(); }, pi, 1e-4},
        {"1000-gon ~ circle perimeter", [] { return geo::parse_shape("ngon c 1000 1")->perimeter(); }, 2 * pi, 1e-4},
        {"circle area", [] { return geo::parse_shape("circle c 2")->area(); }, 4 * pi, 1e-12},
    };
    std::vector<std::string> failures;
    for (const auto &c : cases) {
        double got = c.got();
        if (!(std::fabs(got - c.want) <= c.tol)) {
            std::ostringstream os;
            os << c.what << ": got " << got << ", want " << c.want;
            failures.push_back(os.str());
        }
    }
    bool threw = false;
    try {
        geo::parse_shape("blob b 1");
    } catch (const std::invalid_argument &) {
        threw = true;
    }
    if (!threw)
        failures.push_back("unknown shape kind was accepted");
    return failures;
}

} // namespace app
