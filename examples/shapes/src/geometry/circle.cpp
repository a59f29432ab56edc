#include "shape.hpp"

#include <stdexcept>

namespace geo {

namespace {
constexpr double kPi = 3.14159265358979323846;
}

Circle::Circle(std::string name, double radius) : Shape(std::move(name)), r_(radius)
{
    if (!(radius > 0.0))
        throw std::invalid_argument("circle radius must be positive");
}

double Circle::area() const { return kPi * r_ * r_; }
double Circle::perimeter() const { return 2.0 * kPi * r_; }

Rectangle::Rectangle(std::string name, double width, double height)
    : Shape(std::move(name)), width_(width), height_(height)
{
    if (!(width > 0.0) || !(height > 0.0))
        throw std::invalid_argument("rectangle sides must be positive");
}

double Rectangle::area() const { return width_ * height_; }
double Rectangle::perimeter() const { return 2.0 * (width_ + height_); }

} // namespace geo
