#include "report.hpp"

#include <algorithm>
#include <iomanip>
#include <sstream>
#include <stdexcept>

namespace rpt {

std::map<std::string, Stats> summarize(const Table &table, std::size_t column)
{
    if (column >= table.columns().size())
        throw std::out_of_range("no such column");
    std::map<std::string, std::vector<double>> groups;
    for (const auto &row : table.rows())
        groups[row.group].push_back(row.values[column]);

    std::map<std::string, Stats> out;
    for (auto &[group, values] : groups) {
        // Sum in sorted order so the result does not depend on row order.
        std::sort(values.begin(), values.end());
        Stats s;
        s.count = values.size();
        for (double v : values)
            s.total += v;
        auto [lo, hi] = std::minmax_element(values.begin(), values.end());
        s.min = *lo;
        s.max = *hi;
        out.emplace(group, s);
    }
    return out;
}

std::string render_summary(const std::map<std::string, Stats> &stats, const std::string &what,
                           int precision)
{
    std::size_t wgroup = 5;
    for (const auto &kv : stats)
        wgroup = std::max(wgroup, kv.first.size());

    std::ostringstream os;
    os << "Summary of " << what << " by kind\n";
    os << std::left << std::setw(static_cast<int>(wgroup)) << "kind" << std::right << std::setw(6)
       << "count" << std::setw(12) << "total" << std::setw(12) << "mean" << std::setw(12) << "min"
       << std::setw(12) << "max" << '\n';
    os << std::fixed << std::setprecision(precision);
    Stats all;
    bool first = true;
    for (const auto &[group, s] : stats) {
        os << std::left << std::setw(static_cast<int>(wgroup)) << group << std::right << std::setw(6)
           << s.count << std::setw(12) << s.total << std::setw(12) << s.mean() << std::setw(12)
           << s.min << std::setw(12) << s.max << '\n';
        all.count += s.count;
        all.total += s.total;
        all.min = first ? s.min : std::min(all.min, s.min);
        all.max = first ? s.max : std::max(all.max, s.max);
        first = false;
    }
    os << std::left << std::setw(static_cast<int>(wgroup)) << "ALL" << std::right << std::setw(6)
       << all.count << std::setw(12) << all.total << std::setw(12) << all.mean() << std::setw(12)
       << all.min << std::setw(12) << all.max << '\n';
    return os.str();
}

} // namespace rpt
