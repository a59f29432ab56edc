#include "shape.hpp"

#include <cmath>
#include <numeric>
#include <stdexcept>

namespace geo {

namespace {
constexpr double kPi = 3.14159265358979323846;

template <typename F>
double sum_edges(const std::vector<Point> &v, F &&edge)
{
    double total = 0.0;
    for (std::size_t i = 0, n = v.size(); i < n; ++i)
        total += edge(v[i], v[(i + 1) % n]);
    return total;
}
} // namespace

Polygon::Polygon(std::string name, std::vector<Point> vertices)
    : Shape(std::move(name)), vertices_(std::move(vertices))
{
    if (vertices_.size() < 3)
        throw std::invalid_argument("polygon needs at least 3 vertices");
}

std::string Polygon::kind() const
{
    switch (vertices_.size()) {
    case 3: return "triangle";
    case 4: return "quadrilateral";
    case 5: return "pentagon";
    case 6: return "hexagon";
    default: return std::to_string(vertices_.size()) + "-gon";
    }
}

double Polygon::area() const
{
    // Shoelace formula.
    double twice = sum_edges(vertices_, [](const Point &a, const Point &b) {
        return a.x * b.y - b.x * a.y;
    });
    return std::fabs(twice) / 2.0;
}

double Polygon::perimeter() const
{
    return sum_edges(vertices_, [](const Point &a, const Point &b) {
        return std::hypot(b.x - a.x, b.y - a.y);
    });
}

std::unique_ptr<Shape> make_regular_polygon(std::string name, int sides, double radius)
{
    if (sides < 3 || !(radius > 0.0))
        throw std::invalid_argument("regular polygon needs >= 3 sides and radius > 0");
    std::vector<int> idx(static_cast<std::size_t>(sides));
    std::iota(idx.begin(), idx.end(), 0);
    std::vector<Point> pts;
    pts.reserve(idx.size());
    for (int i : idx) {
        double t = 2.0 * kPi * i / sides;
        pts.push_back({radius * std::cos(t), radius * std::sin(t)});
    }
    return std::make_unique<Polygon>(std::move(name), std::move(pts));
}

} // namespace geo
