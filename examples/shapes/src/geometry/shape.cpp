#include "shape.hpp"

#include <algorithm>
#include <cctype>
#include <iterator>
#include <sstream>
#include <stdexcept>

namespace geo {

Shape::~Shape() = default;

namespace {

std::vector<std::string> split_words(const std::string &s)
{
    std::istringstream in(s);
    return {std::istream_iterator<std::string>(in), std::istream_iterator<std::string>()};
}

double to_number(const std::string &word)
{
    std::size_t used = 0;
    double v = std::stod(word, &used);
    if (used != word.size())
        throw std::invalid_argument("not a number: " + word);
    return v;
}

Point to_point(const std::string &word)
{
    auto comma = word.find(',');
    if (comma == std::string::npos)
        throw std::invalid_argument("expected x,y: " + word);
    return {to_number(word.substr(0, comma)), to_number(word.substr(comma + 1))};
}

} // namespace

std::unique_ptr<Shape> parse_shape(const std::string &spec)
{
    auto words = split_words(spec);
    if (words.size() < 3)
        throw std::invalid_argument("short shape spec: '" + spec + "'");
    std::string kind = words[0];
    std::transform(kind.begin(), kind.end(), kind.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    const std::string &name = words[1];

    auto need = [&](std::size_t n) {
        if (words.size() != n)
            throw std::invalid_argument("wrong number of fields in '" + spec + "'");
    };

    if (kind == "circle") {
        need(3);
        return std::make_unique<Circle>(name, to_number(words[2]));
    }
    if (kind == "rect") {
        need(4);
        return std::make_unique<Rectangle>(name, to_number(words[2]), to_number(words[3]));
    }
    if (kind == "square") {
        need(3);
        double s = to_number(words[2]);
        return std::make_unique<Rectangle>(name, s, s);
    }
    if (kind == "ngon") {
        need(4);
        return make_regular_polygon(name, static_cast<int>(to_number(words[2])), to_number(words[3]));
    }
    if (kind == "poly") {
        std::vector<Point> pts;
        std::transform(words.begin() + 2, words.end(), std::back_inserter(pts), to_point);
        return std::make_unique<Polygon>(name, std::move(pts));
    }
    throw std::invalid_argument("unknown shape kind '" + words[0] + "'");
}

} // namespace geo
