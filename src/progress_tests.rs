//! Unit tests of `progress`: rates, ETAs, when a log line is due, and the
//! counting reader.

use super::*;

const S: Duration = Duration::from_secs(1);

#[test]
fn rate_and_eta_from_bytes_and_time() {
    let st = stats(50 << 20, Some(100 << 20), 5 * S);
    assert_eq!(st.rate, (10 << 20) as f64);
    assert_eq!(st.percent, Some(50.0));
    assert_eq!(st.eta_s, Some(5));
    assert_eq!(st.total, Some(100 << 20));
}

#[test]
fn eta_rounds_up_and_is_zero_at_the_end() {
    assert_eq!(stats(3, Some(10), S).eta_s, Some(3), "7 bytes left at 3/s");
    assert_eq!(stats(10, Some(10), 2 * S).eta_s, Some(0));
    assert_eq!(stats(10, Some(10), 2 * S).percent, Some(100.0));
}

#[test]
fn no_rate_and_no_eta_before_any_time_or_bytes() {
    let st = stats(0, Some(10), Duration::ZERO);
    assert_eq!(st.rate, 0.0);
    assert_eq!(st.eta_s, None);
    assert_eq!(stats(0, Some(10), S).eta_s, None, "no bytes yet: no rate to extrapolate");
}

#[test]
fn an_exceeded_estimate_gives_no_percent_and_no_eta() {
    let st = stats(120, Some(100), 2 * S);
    assert_eq!(st.total, None);
    assert_eq!(st.percent, None);
    assert_eq!(st.eta_s, None);
    assert_eq!(st.rate, 60.0, "the rate is still known");
}

#[test]
fn unknown_or_zero_totals_are_unknown() {
    assert_eq!(stats(5, None, S).percent, None);
    assert_eq!(stats(5, Some(0), S).total, None);
}

#[test]
fn logs_by_interval_without_a_total() {
    let iv = 10 * S;
    let m = Mark::default();
    assert_eq!(due(&m, 9 * S, &stats(1, None, 9 * S), iv), None);
    let next = due(&m, 10 * S, &stats(1, None, 10 * S), iv).expect("due after the interval");
    assert_eq!(next, Mark { at: 10 * S, tenth: 0, lines: 1 });
    assert_eq!(due(&next, 19 * S, &stats(2, None, 19 * S), iv), None);
    assert!(due(&next, 20 * S, &stats(2, None, 20 * S), iv).is_some());
}

#[test]
fn logs_each_tenth_but_not_more_than_ten_times_an_interval() {
    let iv = 10 * S;
    let m = Mark::default();
    // 15 % after 2 s: a new tenth, and 2 s ≥ 1 s since the last line.
    let next = due(&m, 2 * S, &stats(15, Some(100), 2 * S), iv).expect("a new tenth");
    assert_eq!(next.tenth, 1);
    // Same tenth later: nothing until the interval.
    assert_eq!(due(&next, 3 * S, &stats(19, Some(100), 3 * S), iv), None);
    // The next tenth only half a second later: held back.
    let soon = 2 * S + Duration::from_millis(500);
    assert_eq!(due(&next, soon, &stats(25, Some(100), soon), iv), None);
    // A second later it goes out, jumping straight to the current tenth.
    let later = due(&next, 3 * S, &stats(47, Some(100), 3 * S), iv).expect("next tenth");
    assert_eq!(later.tenth, 4);
    assert_eq!(later.lines, 2);
}

#[test]
fn passing_an_estimate_falls_back_to_the_interval() {
    let iv = 10 * S;
    let m = Mark { at: 5 * S, tenth: 9, lines: 3 };
    assert_eq!(due(&m, 7 * S, &stats(130, Some(100), 7 * S), iv), None);
    let next = due(&m, 15 * S, &stats(150, Some(100), 15 * S), iv).expect("interval");
    assert_eq!(next.tenth, 9, "the tenth never goes back");
}

#[test]
fn counting_reader_counts_and_passes_bytes_through() {
    set_mode(Mode::Logs);
    let p = Progress::start("test", Some(1000), false);
    let mut out = Vec::new();
    p.reader(&[7u8; 600][..]).read_to_end(&mut out).expect("read");
    assert_eq!(out, vec![7u8; 600]);
    let bytes = p.0.as_ref().map(|i| i.bytes.load(Ordering::Relaxed));
    assert_eq!(bytes, Some(600));
    p.finish();
    p.finish();
}

#[test]
fn off_shows_nothing_and_counts_nothing() {
    let p = Progress(None);
    p.inc(5);
    p.set(9);
    p.finish();
}

#[test]
fn bar_templates_are_valid() {
    let _ = bar_style(true);
    let _ = bar_style(false);
    let _ = spinner_style();
}
