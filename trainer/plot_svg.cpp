// The scatter plot as SVG (plot_svg.h): axis ticks, the frame, points with labels, a legend.
#include "trainer/plot_svg.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "autograd/check.h"

namespace loom {

namespace {

// Layout in SVG pixels: room for the title above, tick labels and axis titles left and below.
constexpr double kLeft = 90, kRight = 30, kTop = 84, kBottom = 64;

struct Frame {
  double x0, x1, y0, y1;  // plot area: x0 left, x1 right, y0 top, y1 bottom
  AxisTicks xt, yt;
  double px(double x) const { return x0 + (x - xt.first) / (xt.last - xt.first) * (x1 - x0); }
  double py(double y) const { return y1 - (y - yt.first) / (yt.last - yt.first) * (y1 - y0); }
};

bool finite_point(const ScatterPoint& p) {
  return std::isfinite(p.x) && std::isfinite(p.y);
}

// The data range with a margin, so no point sits on the frame.
AxisTicks axis_for(const std::vector<double>& values) {
  const auto [lo, hi] = std::minmax_element(values.begin(), values.end());
  const double pad = (*hi - *lo) * 0.06;
  return nice_ticks(*lo - pad, *hi + pad);
}

std::string num(double v) {
  return fmt::format("{:.2f}", v);
}

void draw_axes(std::string& svg, const Frame& f, const ScatterPlot& plot) {
  svg += fmt::format(
      "<rect class=\"plot-area\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"#ffffff\" "
      "stroke=\"#333333\"/>\n",
      num(f.x0), num(f.y0), num(f.x1 - f.x0), num(f.y1 - f.y0));
  svg += "<g class=\"x-ticks\" font-size=\"12\" text-anchor=\"middle\">\n";
  for (double v : f.xt.values) {
    const double x = f.px(v);
    svg += fmt::format(
        "<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" stroke=\"#e4e4e4\"/>"
        "<line x1=\"{0}\" y1=\"{2}\" x2=\"{0}\" y2=\"{3}\" stroke=\"#333333\"/>"
        "<text x=\"{0}\" y=\"{4}\">{5}</text>\n",
        num(x), num(f.y0), num(f.y1), num(f.y1 + 5), num(f.y1 + 20),
        xml_escape(format_tick(v, f.xt.step)));
  }
  svg += "</g>\n<g class=\"y-ticks\" font-size=\"12\" text-anchor=\"end\">\n";
  for (double v : f.yt.values) {
    const double y = f.py(v);
    svg += fmt::format(
        "<line x1=\"{0}\" y1=\"{2}\" x2=\"{1}\" y2=\"{2}\" stroke=\"#e4e4e4\"/>"
        "<line x1=\"{3}\" y1=\"{2}\" x2=\"{0}\" y2=\"{2}\" stroke=\"#333333\"/>"
        "<text x=\"{4}\" y=\"{5}\">{6}</text>\n",
        num(f.x0), num(f.x1), num(y), num(f.x0 - 5), num(f.x0 - 8), num(y + 4),
        xml_escape(format_tick(v, f.yt.step)));
  }
  svg += "</g>\n";
  svg += fmt::format(
      "<text class=\"x-label\" x=\"{}\" y=\"{}\" font-size=\"14\" "
      "text-anchor=\"middle\">{}</text>\n",
      num((f.x0 + f.x1) / 2), num(f.y1 + 46), xml_escape(plot.x_label));
  const double yl_x = 24, yl_y = (f.y0 + f.y1) / 2;
  svg += fmt::format(
      "<text class=\"y-label\" x=\"{0}\" y=\"{1}\" font-size=\"14\" text-anchor=\"middle\" "
      "transform=\"rotate(-90 {0} {1})\">{2}</text>\n",
      num(yl_x), num(yl_y), xml_escape(plot.y_label));
}

// An approximate box around a label (DejaVu Sans at 12px averages about 7 px a character),
// for keeping labels off each other and off the markers.
struct Box {
  double x0, y0, x1, y1;
  bool overlaps(const Box& o) const { return x0 < o.x1 && o.x0 < x1 && y0 < o.y1 && o.y0 < y1; }
};

struct LabelPlace {
  double x, y;
  bool anchor_end;
  Box box;
};

// The first of right-above, right-below, left-above, left-below of the marker that stays inside
// the plot area and clear of the labels and markers already there; else the first inside.
LabelPlace place_label(double x, double y, size_t chars, const Frame& f,
                       const std::vector<Box>& taken) {
  const double w = 7.0 * static_cast<double>(chars), gap = 9;
  const LabelPlace options[] = {
      {x + gap, y - 7, false, {x + gap, y - 19, x + gap + w, y - 4}},
      {x + gap, y + 17, false, {x + gap, y + 5, x + gap + w, y + 20}},
      {x - gap, y - 7, true, {x - gap - w, y - 19, x - gap, y - 4}},
      {x - gap, y + 17, true, {x - gap - w, y + 5, x - gap, y + 20}},
  };
  const LabelPlace* fallback = nullptr;
  for (const LabelPlace& o : options) {
    const bool inside =
        o.box.x0 >= f.x0 && o.box.x1 <= f.x1 && o.box.y0 >= f.y0 && o.box.y1 <= f.y1;
    if (!inside) continue;
    if (!fallback) fallback = &o;
    if (std::none_of(taken.begin(), taken.end(), [&](const Box& b) { return b.overlaps(o.box); }))
      return o;
  }
  return fallback ? *fallback : options[x > (f.x0 + f.x1) / 2 ? 2 : 0];
}

void draw_points(std::string& svg, const Frame& f, const ScatterPlot& plot) {
  if (plot.connect) {
    std::string pts;
    int n = 0;
    for (const ScatterPoint& p : plot.points) {
      if (p.reference || !finite_point(p)) continue;
      pts += fmt::format("{}{},{}", pts.empty() ? "" : " ", num(f.px(p.x)), num(f.py(p.y)));
      ++n;
    }
    if (n >= 2)
      svg += fmt::format(
          "<polyline class=\"curve\" points=\"{}\" fill=\"none\" stroke=\"#9aa7b8\" "
          "stroke-width=\"1.5\"/>\n",
          pts);
  }
  std::vector<Box> taken;  // markers first, so that no label covers a point
  for (const ScatterPoint& p : plot.points)
    if (finite_point(p)) {
      const double x = f.px(p.x), y = f.py(p.y);
      taken.push_back({x - 6, y - 6, x + 6, y + 6});
    }
  svg += "<g class=\"points\" font-size=\"12\">\n";
  for (const ScatterPoint& p : plot.points) {
    if (!finite_point(p)) continue;
    const double x = f.px(p.x), y = f.py(p.y);
    if (p.reference)
      svg += fmt::format(
          "<rect class=\"point reference\" x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" "
          "fill=\"#ffffff\" stroke=\"#c0392b\" stroke-width=\"2\" data-x=\"{}\" data-y=\"{}\"/>",
          num(x - 5), num(y - 5), p.x, p.y);
    else
      svg += fmt::format(
          "<circle class=\"point\" cx=\"{}\" cy=\"{}\" r=\"5\" fill=\"#1f5fa8\" data-x=\"{}\" "
          "data-y=\"{}\"/>",
          num(x), num(y), p.x, p.y);
    const LabelPlace at = place_label(x, y, p.label.size(), f, taken);
    taken.push_back(at.box);
    svg += fmt::format("<text class=\"label\" x=\"{}\" y=\"{}\" text-anchor=\"{}\">{}</text>\n",
                       num(at.x), num(at.y), at.anchor_end ? "end" : "start", xml_escape(p.label));
  }
  svg += "</g>\n";
}

// Above the plot area's right end, where it covers no point.
void draw_legend(std::string& svg, const Frame& f, const ScatterPlot& plot) {
  const bool any_ref = std::any_of(plot.points.begin(), plot.points.end(),
                                   [](const ScatterPoint& p) { return p.reference; });
  const double y = f.y0 - 12;
  double x = f.x1 - (any_ref ? 210 : 90);
  svg += fmt::format(
      "<g class=\"legend\" font-size=\"12\"><circle cx=\"{}\" cy=\"{}\" r=\"5\" "
      "fill=\"#1f5fa8\"/><text x=\"{}\" y=\"{}\">trained run</text>",
      num(x), num(y - 4), num(x + 10), num(y));
  x += 110;
  if (any_ref)
    svg += fmt::format(
        "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"#ffffff\" stroke=\"#c0392b\" "
        "stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">base model</text>",
        num(x - 5), num(y - 9), num(x + 10), num(y));
  svg += "</g>\n";
}

}  // namespace

AxisTicks nice_ticks(double lo, double hi, int target) {
  LOOM_CHECK(std::isfinite(lo) && std::isfinite(hi) && lo <= hi && target >= 1,
             "nice_ticks: bad range [{}, {}] / {}", lo, hi, target);
  if (hi - lo < 1e-12 * std::max(1.0, std::abs(lo))) {  // one value: widen around it
    const double half = lo == 0 ? 1.0 : std::abs(lo) * 0.1;
    lo -= half;
    hi += half;
  }
  const double raw = (hi - lo) / target;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double norm = raw / magnitude;
  const double nice = norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10;
  AxisTicks t;
  t.step = nice * magnitude;
  t.first = std::floor(lo / t.step + 1e-9) * t.step;
  t.last = std::ceil(hi / t.step - 1e-9) * t.step;
  const auto n = static_cast<int64_t>(std::llround((t.last - t.first) / t.step));
  for (int64_t i = 0; i <= n; ++i) t.values.push_back(t.first + static_cast<double>(i) * t.step);
  return t;
}

std::string format_tick(double value, double step) {
  if (std::abs(value) < step * 1e-9) value = 0;  // no "-0" or "1e-17"
  if (std::abs(value) >= 1e6 || (value != 0 && std::abs(value) < 1e-4))
    return fmt::format("{:g}", value);
  // Digits after the point: as many as the step has (2.5 x 10^-1 needs two).
  int decimals = std::max(0, -static_cast<int>(std::floor(std::log10(step) + 1e-9)));
  const double mantissa = step / std::pow(10.0, std::floor(std::log10(step) + 1e-9));
  if (std::abs(mantissa - 2.5) < 1e-6) decimals += 1;
  return fmt::format("{:.{}f}", value, decimals);
}

std::string xml_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string render_scatter_svg(const ScatterPlot& plot) {
  std::vector<double> xs, ys;
  std::vector<std::string> left_out;
  for (const ScatterPoint& p : plot.points) {
    if (finite_point(p)) {
      xs.push_back(p.x);
      ys.push_back(p.y);
    } else {
      left_out.push_back(p.label);
    }
  }
  if (xs.empty())
    throw Error(fmt::format("plot \"{}\": no point has finite coordinates ({} points given)",
                            plot.title, plot.points.size()));
  Frame f{kLeft, plot.width - kRight, kTop, plot.height - kBottom, axis_for(xs), axis_for(ys)};
  std::string svg = fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} "
      "{1}\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n"
      "<rect width=\"{0}\" height=\"{1}\" fill=\"#ffffff\"/>\n"
      "<text class=\"title\" x=\"{2}\" y=\"28\" font-size=\"16\" font-weight=\"bold\" "
      "text-anchor=\"middle\">{3}</text>\n",
      plot.width, plot.height, num(plot.width / 2.0), xml_escape(plot.title));
  if (!plot.subtitle.empty())
    svg += fmt::format(
        "<text class=\"subtitle\" x=\"{}\" y=\"48\" font-size=\"12\" fill=\"#555555\" "
        "text-anchor=\"middle\">{}</text>\n",
        num(plot.width / 2.0), xml_escape(plot.subtitle));
  draw_axes(svg, f, plot);
  draw_points(svg, f, plot);
  draw_legend(svg, f, plot);
  if (!left_out.empty()) {
    std::string names;
    for (const std::string& s : left_out) names += (names.empty() ? "" : ", ") + s;
    svg += fmt::format(
        "<text class=\"note\" x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"#c0392b\">not drawn "
        "(no finite value): {}</text>\n",
        num(kLeft), num(plot.height - 8.0), xml_escape(names));
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace loom
