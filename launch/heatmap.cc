#include "launch/heatmap.h"

#include <cairo.h>
#include <fontconfig/fontconfig.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "runtime/common/error.h"

namespace tessera::launch {

namespace {

constexpr double kCell = 34, kRowLabel = 300, kColLabel = 130, kTitle = 28, kGap = 24;

std::string clipped(const std::string& s, size_t n) {
  return s.size() <= n ? s : s.substr(0, n - 1) + "~";
}

}  // namespace

void write_heatmap_png(const std::string& path, const std::vector<HeatPanel>& panels) {
  if (panels.empty()) throw Error(str("--png ", path, ": nothing to draw"));
  size_t max_cols = 1;
  double height = kGap;
  for (const HeatPanel& p : panels) {
    if (p.value.size() != p.rows.size())
      throw Error(str("heat map '", p.title, "': ", p.value.size(), " rows of values for ",
                      p.rows.size(), " labels"));
    for (const auto& r : p.value)
      if (r.size() != p.cols.size())
        throw Error(str("heat map '", p.title, "': a row of ", r.size(), " values for ",
                        p.cols.size(), " columns"));
    max_cols = std::max(max_cols, p.cols.size());
    height += kTitle + kColLabel + kCell * static_cast<double>(p.rows.size()) + kGap;
  }
  double width = kRowLabel + kCell * static_cast<double>(max_cols) + kGap;
  for (const HeatPanel& p : panels)  // titles whole: ~8.5 px a character at 15 px
    width = std::max(width, 16 + 8.5 * static_cast<double>(p.title.size()));
  const int W = static_cast<int>(width);
  const int H = static_cast<int>(height);
  cairo_surface_t* surface = cairo_image_surface_create(CAIRO_FORMAT_RGB24, W, H);
  cairo_t* cr = cairo_create(surface);
  cairo_set_source_rgb(cr, 1, 1, 1);
  cairo_paint(cr);
  cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
  double y = kGap;
  for (const HeatPanel& p : panels) {
    cairo_set_source_rgb(cr, 0, 0, 0);
    cairo_set_font_size(cr, 15);
    cairo_move_to(cr, 8, y + 18);
    cairo_show_text(cr, p.title.c_str());
    y += kTitle;
    cairo_set_font_size(cr, 11);
    for (size_t c = 0; c < p.cols.size(); ++c) {  // column labels, rotated
      cairo_save(cr);
      cairo_move_to(cr, kRowLabel + kCell * static_cast<double>(c) + kCell * 0.65,
                    y + kColLabel - 4);
      cairo_rotate(cr, -M_PI / 2);
      cairo_show_text(cr, clipped(p.cols[c], 21).c_str());
      cairo_restore(cr);
    }
    y += kColLabel;
    for (size_t r = 0; r < p.rows.size(); ++r) {
      const double top = y + kCell * static_cast<double>(r);
      cairo_set_source_rgb(cr, 0, 0, 0);
      cairo_move_to(cr, 8, top + kCell * 0.62);
      cairo_show_text(cr, clipped(p.rows[r], 46).c_str());
      for (size_t c = 0; c < p.cols.size(); ++c) {
        const double v = p.value[r][c], left = kRowLabel + kCell * static_cast<double>(c);
        if (v < 0 || !std::isfinite(v)) {
          cairo_set_source_rgb(cr, 0.85, 0.85, 0.85);
        } else {
          const double t = std::clamp(v, 0.0, 1.0);  // white → (0.03, 0.19, 0.42)
          cairo_set_source_rgb(cr, 1 - 0.97 * t, 1 - 0.81 * t, 1 - 0.58 * t);
        }
        cairo_rectangle(cr, left, top, kCell - 1, kCell - 1);
        cairo_fill(cr);
        if (v >= 0.005 && std::isfinite(v)) {  // blank below 0.5%: the map reads at a glance
          char text[16];
          std::snprintf(text, sizeof text, "%.0f", std::round(v * 100));
          cairo_set_source_rgb(cr, v > 0.55 ? 1 : 0, v > 0.55 ? 1 : 0, v > 0.55 ? 1 : 0);
          cairo_set_font_size(cr, 10);
          cairo_move_to(cr, left + 6, top + kCell * 0.6);
          cairo_show_text(cr, text);
          cairo_set_font_size(cr, 11);
        }
      }
    }
    y += kCell * static_cast<double>(p.rows.size()) + kGap;
  }
  cairo_destroy(cr);
  const cairo_status_t st = cairo_surface_write_to_png(surface, path.c_str());
  cairo_surface_destroy(surface);
  // Nothing of cairo's is alive now: release its font caches and
  // fontconfig's, which would otherwise live (and read as leaks) until exit.
  cairo_debug_reset_static_data();
  FcFini();
  if (st != CAIRO_STATUS_SUCCESS)
    throw Error(str("--png: cannot write ", path, ": ", cairo_status_to_string(st)));
}

}  // namespace tessera::launch
