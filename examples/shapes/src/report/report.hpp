// Table formatting and per-group statistics (shared library "report").
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <vector>

namespace rpt {

struct Row {
    std::string name;
    std::string group;
    std::vector<double> values;
};

class Table {
public:
    Table(std::string title, std::vector<std::string> value_columns, int precision = 3);

    void add(Row row);
    std::size_t size() const { return rows_.size(); }
    const std::vector<Row> &rows() const { return rows_; }

    // Sort rows by a value column (descending), ties broken by name.
    void sort_by(std::size_t column);

    // Render an aligned text table.
    std::string render() const;

    const std::vector<std::string> &columns() const { return columns_; }
    int precision() const { return precision_; }

private:
    std::string title_;
    std::vector<std::string> columns_;
    int precision_;
    std::vector<Row> rows_;
};

struct Stats {
    std::size_t count = 0;
    double total = 0.0;
    double min = 0.0;
    double max = 0.0;
    double mean() const { return count ? total / static_cast<double>(count) : 0.0; }
};

// Per-group statistics over one value column, keyed (and so ordered) by group.
std::map<std::string, Stats> summarize(const Table &table, std::size_t column);

// Render the output of summarize() as text.
std::string render_summary(const std::map<std::string, Stats> &stats,
                           const std::string &what, int precision);

} // namespace rpt
