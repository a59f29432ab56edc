#include "report.hpp"

#include <algorithm>
#include <iomanip>
#include <numeric>
#include <sstream>
#include <stdexcept>

namespace rpt {

Table::Table(std::string title, std::vector<std::string> value_columns, int precision)
    : title_(std::move(title)), columns_(std::move(value_columns)), precision_(precision)
{
}

void Table::add(Row row)
{
    if (row.values.size() != columns_.size())
        throw std::invalid_argument("row '" + row.name + "' has the wrong number of values");
    rows_.push_back(std::move(row));
}

void Table::sort_by(std::size_t column)
{
    if (column >= columns_.size())
        throw std::out_of_range("no such column");
    std::stable_sort(rows_.begin(), rows_.end(), [column](const Row &a, const Row &b) {
        if (a.values[column] != b.values[column])
            return a.values[column] > b.values[column];
        return a.name < b.name;
    });
}

namespace {

std::string fixed(double v, int precision)
{
    std::ostringstream os;
    os << std::fixed << std::setprecision(precision) << v;
    return os.str();
}

} // namespace

std::string Table::render() const
{
    // Pre-format every cell, then size the columns.
    std::vector<std::vector<std::string>> cells;
    cells.reserve(rows_.size() + 1);
    std::vector<std::string> header{"#", "name", "kind"};
    header.insert(header.end(), columns_.begin(), columns_.end());
    cells.push_back(header);
    for (std::size_t i = 0; i < rows_.size(); ++i) {
        std::vector<std::string> line{std::to_string(i + 1), rows_[i].name, rows_[i].group};
        std::transform(rows_[i].values.begin(), rows_[i].values.end(), std::back_inserter(line),
                       [this](double v) { return fixed(v, precision_); });
        cells.push_back(std::move(line));
    }

    std::vector<std::size_t> width(header.size(), 0);
    for (const auto &line : cells)
        for (std::size_t c = 0; c < line.size(); ++c)
            width[c] = std::max(width[c], line[c].size());

    std::size_t total = std::accumulate(width.begin(), width.end(), std::size_t{0}) + 3 * (width.size() - 1);
    std::ostringstream os;
    os << title_ << '\n' << std::string(std::max(total, title_.size()), '=') << '\n';
    for (std::size_t r = 0; r < cells.size(); ++r) {
        for (std::size_t c = 0; c < cells[r].size(); ++c) {
            if (c)
                os << " | ";
            // Text columns (name, kind) left-aligned, numbers right-aligned.
            bool left = (c == 1 || c == 2);
            os << (left ? std::left : std::right) << std::setw(static_cast<int>(width[c])) << cells[r][c];
        }
        os << '\n';
        if (r == 0)
            os << std::string(total, '-') << '\n';
    }
    return os.str();
}

} // namespace rpt
