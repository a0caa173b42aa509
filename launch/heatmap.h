// PNG heat maps of routing (cairo): what `tessera route --png` draws.
#pragma once

#include <string>
#include <vector>

namespace tessera::launch {

// One panel per router: a grid of rows × columns (tasks × experts, or tasks
// × modules) shaded by value in [0, 1] (white 0 → dark blue 1; a negative
// value, "not applicable", is grey), each cell printed as a percentage when
// there is room, the row labels at the left, the column labels on top, and
// the panel's title above it. Panels are stacked top to bottom in one PNG.
struct HeatPanel {
  std::string title;
  std::vector<std::string> rows, cols;
  std::vector<std::vector<double>> value;  // [rows][cols]
};
// Error naming `path` when it cannot be written or a panel's values do not
// match its labels.
void write_heatmap_png(const std::string& path, const std::vector<HeatPanel>& panels);

}  // namespace tessera::launch
