//! [`Table`]: aligned text tables whose headers line up with their cells and whose long fields are cut, so one
//! 70 KB argv or a multi-line description cannot turn `muster requests` into a wall of text. Widths are display
//! widths (a CJK hostname takes two columns per character). The full values are always in `--json`.

use console::{measure_text_width, truncate_str};

/// Which side of its column a cell sticks to: numbers right, words left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Padded on the right.
    Left,
    /// Padded on the left.
    Right,
}

/// Between two columns.
const GAP: &str = "  ";
/// Marks a cut cell.
const ELLIPSIS: &str = "…";
/// Widest cell of any column but the last: ids, states and hostnames fit; a column never takes the whole line.
pub const MAX_CELL_WIDTH: usize = 48;
/// The last column keeps at least this much on a narrow terminal, even if the line then wraps: a description cut
/// to nothing says nothing.
pub const MIN_LAST_WIDTH: usize = 16;
/// The last column's cut when the width is unknown (output to a file or a pipe): long enough for any real
/// description, short enough that one cell is not a 70 KB line.
pub const MAX_UNBOUNDED_WIDTH: usize = 512;

/// A table being filled row by row, then rendered once.
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these headers and alignments; the last column is the one cut to the line width.
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Self { columns: columns.to_vec(), rows: Vec::new() }
    }

    /// Adds a row: one cell per column (missing cells are empty, extra ones dropped).
    pub fn row(&mut self, cells: impl IntoIterator<Item = String>) {
        let mut cells: Vec<String> = cells.into_iter().map(|c| one_line(&c)).collect();
        cells.resize(self.columns.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as text, each line at most `width` columns wide when the columns allow it (`None`: width
    /// unknown, cut the last column at [`MAX_UNBOUNDED_WIDTH`]).
    pub fn render(&self, width: Option<usize>) -> String {
        self.lines(width).into_iter().map(|l| l + "\n").collect()
    }

    /// [`Table::render`] as lines: the header, then one per row in order (for callers that print more under a
    /// row).
    pub fn lines(&self, width: Option<usize>) -> Vec<String> {
        let n = self.columns.len();
        let Some(last) = n.checked_sub(1) else { return Vec::new() };
        let cut = |cell: &str, max: usize| truncate_str(cell, max, ELLIPSIS).into_owned();
        let mut rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                r.iter().enumerate().map(|(i, c)| if i < last { cut(c, MAX_CELL_WIDTH) } else { c.clone() }).collect()
            })
            .collect();
        let mut widths: Vec<usize> = self.columns.iter().map(|(h, _)| measure_text_width(h)).collect();
        for r in &rows {
            for (i, c) in r.iter().enumerate().take(last) {
                widths[i] = widths[i].max(measure_text_width(c));
            }
        }
        let fixed: usize = widths[..last].iter().sum::<usize>() + GAP.len() * last;
        let last_max = width.map_or(MAX_UNBOUNDED_WIDTH, |w| w.saturating_sub(fixed).max(MIN_LAST_WIDTH));
        for r in &mut rows {
            r[last] = cut(&r[last], last_max);
            widths[last] = widths[last].max(measure_text_width(&r[last]));
        }
        let mut out = Vec::with_capacity(rows.len() + 1);
        let header: Vec<String> = self.columns.iter().map(|(h, _)| h.to_string()).collect();
        for r in std::iter::once(&header).chain(&rows) {
            let mut line = String::new();
            for (i, cell) in r.iter().enumerate() {
                if i > 0 {
                    line.push_str(GAP);
                }
                let pad = widths[i].saturating_sub(measure_text_width(cell));
                match self.columns[i].1 {
                    Align::Left => {
                        line.push_str(cell);
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                }
            }
            out.push(line.trim_end().to_string());
        }
        out
    }
}

/// A cell on one line: newlines and tabs (a multi-line argv, a stack trace in a detail) become spaces and other
/// control characters are dropped, so no cell can break the table or move the cursor.
pub fn one_line(s: &str) -> String {
    s.chars()
        .filter_map(|c| {
            if c.is_whitespace() {
                Some(' ')
            } else if c.is_control() {
                None
            } else {
                Some(c)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let mut t = Table::new(&[("ID", Align::Right), ("STATUS", Align::Left), ("DESCRIPTION", Align::Left)]);
        t.row(["7".to_string(), "COMPLETED".to_string(), "RUN true on all hosts".to_string()]);
        t.row(["12".to_string(), "IN_PROGRESS".to_string(), "START master on web-*".to_string()]);
        t
    }

    #[test]
    fn headers_line_up_with_their_cells() {
        let out = table().render(Some(200));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "ID  STATUS       DESCRIPTION",
                " 7  COMPLETED    RUN true on all hosts",
                "12  IN_PROGRESS  START master on web-*",
            ]
        );
    }

    #[test]
    fn the_last_column_is_cut_to_the_width() {
        let mut t = table();
        t.row(["13".to_string(), "PENDING".to_string(), format!("RUN echo {}", "x".repeat(70_000))]);
        let out = t.render(Some(40));
        for line in out.lines() {
            assert!(measure_text_width(line) <= 40, "{line:?} is wider than 40");
        }
        assert!(out.lines().last().unwrap().ends_with('…'), "a cut cell says so: {out}");
        assert!(out.contains("RUN true on all hosts"), "short cells are whole: {out}");
    }

    #[test]
    fn without_a_width_long_cells_are_still_bounded() {
        let mut t = table();
        t.row(["13".to_string(), "x".repeat(1000), "y".repeat(70_000)]);
        let out = t.render(None);
        let last = out.lines().last().unwrap();
        assert_eq!(measure_text_width(last), 2 + 2 + MAX_CELL_WIDTH + 2 + MAX_UNBOUNDED_WIDTH, "{last}");
    }

    #[test]
    fn a_narrow_terminal_keeps_some_of_the_last_column() {
        let out = table().render(Some(10));
        assert!(out.lines().nth(1).unwrap().ends_with("RUN true on all…"), "{out}");
    }

    #[test]
    fn cells_are_one_line_and_wide_characters_count_double() {
        let mut t = Table::new(&[("HOST", Align::Left), ("NOTE", Align::Left)]);
        t.row(["ホスト".to_string(), "a\nb\tc\u{1b}[31m".to_string()]);
        t.row(["h1".to_string(), "ok".to_string()]);
        let out = t.render(Some(80));
        assert_eq!(out, "HOST    NOTE\nホスト  a b c[31m\nh1      ok\n");
        assert_eq!(Table::new(&[]).render(None), "");
    }
}
