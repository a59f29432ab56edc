// shapes [EXTRA] -- build a scene of shapes, print a table sorted by area and a
// per-kind summary, and run a geometry self-check (exit 1 if it fails).
#include <cstdlib>
#include <exception>
#include <iostream>
#include <string>

#include "report.hpp"
#include "scene.hpp"

int main(int argc, char **argv)
{
    int extra = 6;
    if (argc > 2) {
        std::cerr << "usage: " << argv[0] << " [EXTRA]\n";
        return 2;
    }
    if (argc == 2) {
        char *end = nullptr;
        long v = std::strtol(argv[1], &end, 10);
        if (*end != '\0' || v < 0 || v > 10000) {
            std::cerr << argv[0] << ": EXTRA must be an integer in [0, 10000]\n";
            return 2;
        }
        extra = static_cast<int>(v);
    }

    try {
        auto shapes = app::build_scene(app::scene_specs(extra));

        rpt::Table table("Shapes (" + std::to_string(shapes.size()) + ")", {"area", "perimeter"}, 3);
        for (const auto &s : shapes)
            table.add({s->name(), s->kind(), {s->area(), s->perimeter()}});
        table.sort_by(0);

        std::cout << table.render() << '\n';
        std::cout << rpt::render_summary(rpt::summarize(table, 0), "area", 3) << '\n';
        std::cout << rpt::render_summary(rpt::summarize(table, 1), "perimeter", 3) << '\n';

        auto failures = app::self_check();
        for (const auto &f : failures)
            std::cout << "self-check FAILED: " << f << '\n';
        std::cout << "self-check: " << (failures.empty() ? "ok" : "FAILED") << '\n';
        return failures.empty() ? 0 : 1;
    } catch (const std::exception &e) {
        std::cerr << argv[0] << ": " << e.what() << '\n';
        return 1;
    }
}
