// Charts of a results document, drawn by gnuplot. The script, with the data inline, is kept beside
// the PNGs (charts.gp), so a chart can be restyled and redrawn without measuring again.
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>

#include "tool/bench.h"

namespace tieralloc::tool {
namespace {

using nlohmann::json;

double fig(const json& item, const char* name) {
  return item.contains(name) && item[name].is_number() ? item[name].get<double>() : 0.0;
}

std::string quoted(const std::string& s) {
  std::string q = "\"";
  for (char c : s) q += (c == '"' || c == '\\') ? std::string("\\") + c : std::string(1, c);
  return q + "\"";
}

// A table as a gnuplot data block: one row per label, one column per series, in first-seen order.
struct Table {
  std::vector<std::string> rows, series;
  std::map<std::pair<std::string, std::string>, double> cells;
  void set(const std::string& row, const std::string& s, double v) {
    if (std::find(rows.begin(), rows.end(), row) == rows.end()) rows.push_back(row);
    if (std::find(series.begin(), series.end(), s) == series.end()) series.push_back(s);
    cells[{row, s}] = v;
  }
  std::string block(const std::string& name) const {
    std::string b = "$" + name + " << EOD\n";
    for (const auto& r : rows) {
      b += quoted(r);
      for (const auto& s : series) {
        auto it = cells.find({r, s});
        b += " " + (it == cells.end() ? std::string("NaN") : std::to_string(it->second));
      }
      b += "\n";
    }
    return b + "EOD\n";
  }
  // plot command for clustered bars of every series
  std::string bars(const std::string& name) const {
    std::string c = "plot ";
    for (size_t i = 0; i < series.size(); ++i)
      c += (i ? ", " : "") + std::string("$") + name + " using " + std::to_string(i + 2) + (i ? "" : ":xtic(1)") +
           " title " + quoted(series[i]);
    return c + "\n";
  }
};

const char* const kBarStyle =
    "set style data histograms\nset style histogram clustered gap 1\nset style fill solid 0.85 border -1\n"
    "set boxwidth 0.9\nset grid ytics\nset key top right\nset yrange [0:*]\nset xtics rotate by -20\n";

}  // namespace

std::vector<std::string> plot_results(const json& doc, const std::string& dir_in) {
  std::string dir = dir_in;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  const json& results = doc.at("results");
  const bool emulated = doc["topology"].value("emulated", false);
  std::string where = emulated ? "EMULATED tiers (one node; slow-tier access +" +
                                     std::to_string(static_cast<int>(doc["params"].value("slow_delay_ns", 0.0))) + " ns)"
                               : "real tiers";
  std::string machine = doc["machine"].value("cpu_model", "") + ", " + std::to_string(doc["machine"].value("cores", 0)) + " cores";
  std::ostringstream gp;
  gp << "# tieralloc bench charts: gnuplot " << "charts.gp (run in this directory)\n"
     << "set terminal pngcairo size 1200,520 font 'sans,10' noenhanced\n";
  std::vector<std::string> files;
  auto chart = [&](const std::string& file) {
    files.push_back(file);
    gp << "\nset output " << quoted(dir + "/" + file) << "\nreset\n";
  };

  // Throughput and fast-tier hit ratio per placement, side by side (kv per mix, gups).
  auto placement_bars = [&](const std::string& w, const char* figure, double scale, const std::string& unit,
                            const char* group_field, const std::string& what) {
    if (!results.contains(w) || results[w].empty()) return;
    Table speed, hit;
    for (const auto& i : results[w]) {
      std::string row = i.value("placement", "");
      std::string series = group_field ? std::string("mix ") + i.value(group_field, "") : w;
      speed.set(row, series, fig(i, figure) / scale);
      hit.set(row, series, 100 * fig(i, "fast_hit_ratio"));
    }
    chart(w + ".png");
    gp << speed.block("speed") << hit.block("hit") << "set multiplot layout 1,2 title "
       << quoted(w + ": " + what + " per placement, " + where + "; " + machine) << "\n"
       << kBarStyle << "set title 'throughput (higher is better)'\nset ylabel " << quoted(unit) << "\nset xlabel 'placement'\n"
       << speed.bars("speed") << "set title 'accesses served by the fast tier (higher is better)'\n"
       << "set ylabel 'fast-tier hit ratio (%)'\nset yrange [0:100]\n" << hit.bars("hit") << "unset multiplot\n";
  };
  placement_bars("kv", "ops_per_s", 1e3, "thousand operations per second", "mix", "YCSB key-value store");
  placement_bars("gups", "updates_per_s", 1e6, "million updates per second", nullptr, "GUPS with a moving hot set");

  // The GUPS time line: fast-tier hit ratio per placement, and what the engine migrated.
  if (results.contains("gups") && !results["gups"].empty()) {
    chart("gups_timeline.png");
    std::string plot = "plot ";
    double move_t = 0;
    int n = 0;
    for (const auto& i : results["gups"]) {
      std::string name = "t" + std::to_string(n);
      gp << "$" << name << " << EOD\n";
      for (const auto& s : i["timeline"]) gp << s[0].get<double>() << " " << 100 * s[1].get<double>() << " " << s[3].get<double>() << "\n";
      gp << "EOD\n";
      plot += (n ? ", " : "") + std::string("$") + name + " using 1:2 with lines lw 2 title " + quoted(i.value("placement", "") + " hit ratio");
      if (i.value("placement", "") == "tieralloc")
        plot += ", $" + name + " using 1:3 axes x1y2 with lines dt 2 lw 2 title 'tieralloc: migrated (MiB, right axis)'";
      move_t = fig(i, "hot_set_move_s");
      ++n;
    }
    gp << "set title " << quoted("gups: fast-tier hit ratio over time; the hot set moves at " + std::to_string(move_t).substr(0, 4) +
                                 " s; " + where)
       << "\nset xlabel 'time (s)'\nset ylabel 'updates hitting the fast tier (%)'\nset yrange [0:105]\n"
       << "set y2label 'bytes migrated (MiB)'\nset y2range [0:*]\nset y2tics\nset grid\nset key outside bottom center horizontal\n"
       << "set arrow from " << move_t << ",0 to " << move_t << ",100 nohead dt 3 lc 'gray'\n" << plot << "\n";
  }

  if (results.contains("latency") && !results["latency"].empty()) {
    Table t;
    for (const auto& i : results["latency"]) {
      std::string row = i.value("target", "") + (i.contains("kind") ? " (" + i.value("kind", "") + ")" : "");
      t.set(row, emulated ? "with the emulated delay model" : "load-to-use latency", fig(i, "latency_ns"));
      if (fig(i, "emulated_delay_ns") > 0 || emulated) t.set(row, "measured on this machine", fig(i, "measured_ns"));
    }
    chart("latency.png");
    gp << t.block("lat") << kBarStyle << "set title " << quoted("idle load-to-use latency per tier and node (random pointer chase), " + where)
       << "\nset ylabel 'latency (ns, lower is better)'\nset xlabel 'tier or NUMA node'\n" << t.bars("lat");
  }

  if (results.contains("bandwidth") && !results["bandwidth"].empty()) {
    Table t;
    for (const auto& i : results["bandwidth"]) {
      int th = i.value("threads", 1);
      t.set(i.value("target", "") + " " + std::to_string(th) + (th > 1 ? " threads" : " thread"), i.value("op", ""), fig(i, "gb_per_s"));
    }
    chart("bandwidth.png");
    gp << t.block("bw") << kBarStyle << "set title " << quoted("sequential bandwidth per tier and node, " + where +
                                                                   (emulated ? " (both tiers are the same DRAM)" : ""))
       << "\nset ylabel 'bandwidth (GB/s, higher is better)'\nset xlabel 'tier or node, threads'\n" << t.bars("bw");
  }

  if (results.contains("redis") && !results["redis"].empty()) {
    Table t;
    for (const auto& i : results["redis"]) t.set(i.value("allocator", ""), i.value("test", ""), fig(i, "requests_per_s") / 1e3);
    chart("redis.png");
    gp << t.block("redis") << kBarStyle << "set title " << quoted("redis-server under redis-benchmark (1 KiB values, pipeline 16), " + where)
       << "\nset ylabel 'thousand requests per second'\nset xlabel 'allocator and fast-tier limit'\n" << t.bars("redis");
  }
  if (files.empty()) return files;

  const std::string script = dir + "/charts.gp";
  std::ofstream(script) << gp.str();
  std::string cmd = "gnuplot " + quoted(script) + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) throw std::runtime_error("cannot run gnuplot");
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof buf, p)) out += buf;
  int status = pclose(p);
  if (status != 0 || out.find("rror") != std::string::npos) {
    if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
      throw std::runtime_error("gnuplot not found: install it (Debian: apt-get install gnuplot-nox) to draw charts");
    throw std::runtime_error("gnuplot failed on " + script + ":\n" + out);
  }
  for (const auto& f : files) {
    struct stat st;
    if (stat((dir + "/" + f).c_str(), &st) != 0 || st.st_size == 0) throw std::runtime_error("gnuplot wrote no " + dir + "/" + f);
  }
  return files;
}

}  // namespace tieralloc::tool
