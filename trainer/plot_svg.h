// A labelled scatter plot as a standalone SVG file, hand-written (no plotting library): what
// `loom sweep` draws of domain perplexity against general perplexity, one point per run plus
// the base model. Axes get "nice" ticks (1, 2, 2.5 or 5 times a power of ten) that enclose every
// point; each point carries its label beside it; points can be joined by a line in order (a
// trade-off curve). The output is well-formed XML that browsers render as is.
#pragma once

#include <string>
#include <vector>

namespace loom {

struct ScatterPoint {
  double x = 0, y = 0;
  std::string label;
  bool reference = false;  // drawn apart (hollow square): the base model
};

struct ScatterPlot {
  std::string title;
  std::string subtitle;  // a smaller line under the title; "" = none
  std::string x_label, y_label;
  std::vector<ScatterPoint> points;  // non-finite ones are left out (and listed in a note)
  bool connect = false;              // join the non-reference points in order with a line
  int width = 760, height = 520;
};

// Ticks for an axis covering [lo, hi]: `first` and `last` enclose the range, `step` is a nice
// number, about `target` intervals. A zero-width range is widened around its value.
struct AxisTicks {
  double first = 0, last = 1, step = 1;
  std::vector<double> values;
};
AxisTicks nice_ticks(double lo, double hi, int target = 6);

// "12", "2.5", "0.001", "1.5e+06": a tick value with no more digits than the step needs.
std::string format_tick(double value, double step);

// The SVG document. The plot area is the <rect class="plot-area">; points are
// <circle class="point"> (runs) and <rect class="point reference">, each followed by its
// <text class="label">. Throws loom::Error when no point has finite coordinates.
std::string render_scatter_svg(const ScatterPlot& plot);

// Escapes &, <, >, " and ' for XML text and attribute values.
std::string xml_escape(const std::string& text);

}  // namespace loom
