// Shape hierarchy (static library "geometry").
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace geo {

struct Point {
    double x;
    double y;
};

class Shape {
public:
    virtual ~Shape();
    virtual std::string kind() const = 0;
    virtual double area() const = 0;
    virtual double perimeter() const = 0;
    const std::string &name() const { return name_; }

protected:
    explicit Shape(std::string name) : name_(std::move(name)) {}

private:
    std::string name_;
};

class Circle : public Shape {
public:
    Circle(std::string name, double radius);
    std::string kind() const override { return "circle"; }
    double area() const override;
    double perimeter() const override;

private:
    double r_;
};

class Rectangle : public Shape {
public:
    Rectangle(std::string name, double width, double height);
    std::string kind() const override { return width_ == height_ ? "square" : "rectangle"; }
    double area() const override;
    double perimeter() const override;

private:
    double width_;
    double height_;
};

class Polygon : public Shape {
public:
    Polygon(std::string name, std::vector<Point> vertices);
    std::string kind() const override;
    double area() const override;
    double perimeter() const override;
    const std::vector<Point> &vertices() const { return vertices_; }

private:
    std::vector<Point> vertices_;
};

// Regular n-gon inscribed in a circle of the given radius.
std::unique_ptr<Shape> make_regular_polygon(std::string name, int sides, double radius);

// Parse "circle NAME R", "rect NAME W H", "square NAME S",
// "ngon NAME SIDES R" or "poly NAME x1,y1 x2,y2 ...".  Throws std::invalid_argument.
std::unique_ptr<Shape> parse_shape(const std::string &spec);

} // namespace geo
