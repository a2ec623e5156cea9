//! How the page looks: the document head with its whole style sheet inline
//! (the page loads nothing), and the colours of chart series.

/// Series colours in order of use: Okabe–Ito hues, which stay apart also for
/// readers with the common colour-vision deficiencies.
pub(super) const PALETTE: [&str; 8] = [
    "#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#222222", "#8c564b",
];

/// Light (p50) and dark (p99) shade of one latency metric.
pub(super) fn metric_colors(metric: &str) -> (&'static str, &'static str) {
    match metric {
        "ping" => ("#56b4e9", "#0072b2"),
        "bind" => ("#e69f00", "#d55e00"),
        "push" => ("#66c2a5", "#007a5a"),
        _ => ("#b0b0b0", "#555555"),
    }
}

/// The page up to the opening `<main>`: the document head with the whole
/// style sheet.
pub(super) const HEAD: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>miop-bench report</title>
<style>
body { margin: 0; background: #f5f6f8; color: #1d2330;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 28px 40px; }
h1 { font-size: 26px; margin: 0 0 14px; }
h2 { font-size: 18px; margin: 30px 0 12px; padding-bottom: 4px; border-bottom: 1px solid #dde1e7; }
h3 { font-size: 14px; margin: 0 0 6px; color: #4a5262; }
table { border-collapse: collapse; background: #fff; font-variant-numeric: tabular-nums;
  border: 1px solid #e3e6eb; }
th, td { padding: 5px 12px; border-bottom: 1px solid #eceff3; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #eef1f5; font-weight: 600; }
table.meta th { text-align: left; color: #4a5262; font-weight: 600; }
table.meta td { text-align: left; white-space: normal; }
td.url { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; word-break: break-all; }
.cols { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.bad { color: #c0392b; font-weight: 600; }
.warn { background: #fff4e5; border: 1px solid #f0b060; padding: 8px 12px; border-radius: 4px; }
.note { color: #5d6575; }
svg.chart { display: block; width: 100%; height: auto; background: #fff; border: 1px solid #e3e6eb;
  border-radius: 4px; margin: 0 0 18px; }
svg.chart text { font-size: 12px; fill: #3a4150; }
svg.chart text.title { font-size: 15px; font-weight: 600; fill: #1d2330; }
svg.chart text.val { font-size: 11px; fill: #5d6575; }
svg.chart text.empty { font-size: 14px; fill: #8a93a3; }
svg.chart .grid { stroke: #e6e9ee; stroke-width: 1; }
svg.chart .axis { stroke: #8a93a3; stroke-width: 1; }
footer { margin-top: 28px; color: #8a93a3; font-size: 12px; }
</style>
</head>
<body>
<main>
"#;
