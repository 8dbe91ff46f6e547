//! Markdown report tests: escaping of what comes from outside (statements,
//! names, PostgreSQL's messages), the sampled "none observed", the error's
//! DETAIL and HINT, and the server version.

use super::*;

#[test]
fn a_code_span_is_fenced_longer_than_any_backtick_run_in_it() {
    assert_eq!(code("orders"), "`orders`");
    // Padded on both sides: CommonMark strips one space from each.
    assert_eq!(code("SELECT `x`"), "`` SELECT `x` ``");
    assert_eq!(code("a ``` b"), "````a ``` b````");
    assert_eq!(code("two\nlines"), "`two lines`");
}

#[test]
fn a_table_cell_escapes_pipes_even_inside_its_code_span() {
    assert_eq!(cell("SELECT a || b FROM `t`"), "`` SELECT a \\|\\| b FROM `t` ``");
    // The row keeps its four cells: every unescaped pipe is a separator.
    let row = format!("| 1 | 3 | {} | 5 ms |", cell("SELECT 'a|b', `c`"));
    let separators = row.char_indices().filter(|(i, c)| *c == '|' && !row[..*i].ends_with('\\')).count();
    assert_eq!(separators, 5, "{row}");
}

#[test]
fn text_escapes_markup_but_not_underscores_inside_words() {
    assert_eq!(text("Key (homepage)=(a) is duplicated."), "Key (homepage)=(a) is duplicated.");
    assert_eq!(text("index sites_homepage_key"), "index sites_homepage_key");
    assert_eq!(text("`x` | *y* _z_ <b>"), "\\`x\\` \\| \\*y\\* \\_z\\_ \\<b\\>");
    assert_eq!(text("two\nlines"), "two lines");
}

#[test]
fn a_block_is_fenced_longer_than_any_fence_inside_it() {
    assert_eq!(block("diff", "-a\n+b"), "```diff\n-a\n+b\n```");
    // A context line of a diff is indented by one space: it would close a
    // three-backtick fence.
    let body = " COMMENT ON FUNCTION f IS '\n ```\n x'";
    let b = block("diff", body);
    assert!(b.starts_with("````diff\n") && b.ends_with("\n````"), "{b}");
}
