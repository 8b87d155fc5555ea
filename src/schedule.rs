//! When a backup job runs: schedule specs and their next fire time.
//!
//! A spec is one of three forms, told apart by its first word:
//!
//! ```text
//! cron        30 2 * * *          5 fields: minute hour day-of-month month day-of-week
//!             0 30 2 * * *        6 fields: seconds first
//!             @daily              croner's nicknames: @hourly @daily @weekly @monthly
//!                                 @yearly @annually (@weekly is Sunday, as in cron)
//! shorthand   hourly              minute 0 of every hour
//!             daily [HH:MM]       every day, at 00:00 unless given
//!             weekly [DAY] [HH:MM]    DAY is mon..sun or monday..sunday; Monday unless given
//!             monthly [DAY] [HH:MM]   DAY is 1..31 or `last`; the 1st unless given
//!             yearly, annually    January 1st, 00:00
//! interval    every 10m           every 1h30m, every 2s, every 1d12h (units s m h d)
//! ```
//!
//! Words are case-insensitive. Shorthands are rewritten to cron expressions
//! (`daily 02:30` is `0 30 2 * * *`), so one evaluator, croner's, decides
//! every calendar schedule, and the two forms can never disagree.
//!
//! Calendar schedules (cron and shorthands) follow the local wall clock,
//! that is the time zone the TZ environment variable names. Day of month
//! and day of week combine as in Vixie cron: when both are restricted, a day
//! matching either one fires (`0 0 13 * fri` runs on every 13th and on every
//! Friday); croner's `+` prefix on the day of week asks for both
//! (`0 0 13 * +fri` runs on Friday the 13th only). A day of month that a
//! month lacks is skipped in that month: `monthly 31` runs in seven months a
//! year, `monthly last` in all twelve.
//!
//! Daylight saving time, in croner's (Vixie cron's) way: a schedule with a
//! fixed second, minute and hour, such as `daily 02:30`, fires once a day
//! whatever the clock does. On the day 02:30 does not exist (the clock jumps
//! from 02:00 to 03:00) it fires at the first wall clock time after the gap,
//! 03:00; on the day 02:30 happens twice (the clock falls back from 03:00 to
//! 02:00) it fires only the first time. A schedule with a wildcard or a step
//! in those fields (`hourly`, `*/15 * * * *`) fires at each matching wall
//! clock time that exists: none in a skipped hour, twice in a repeated one.
//! (chrono 0.4.45 misreports the instants of a local time near a change of
//! clock; [`Exact`] works them out anew, so that croner's rules hold.)
//!
//! Intervals ignore the calendar and the time zone: `every N` fires at the
//! instants that are whole multiples of N seconds since the Unix epoch, like
//! systemd's `*:0/10`. So `every 10m` fires at :00, :10, :20 … and a restart
//! of the daemon does not shift its slots; `every 1d` fires at midnight UTC,
//! not local midnight (use `daily` for that), and `every 1h` fires at half
//! past the local hour in a zone such as UTC+05:30.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Local, MappedLocalTime, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone,
};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// Longest interval `every` accepts: a longer one is surely a typo, and the
/// calendar forms say "yearly" better.
const MAX_INTERVAL_SECS: u64 = 366 * 86_400;

/// What the user may write, for messages that reject a spec.
const FORMS: &str = "expected a cron expression (5 or 6 fields), hourly, daily [HH:MM], \
                     weekly [DAY] [HH:MM], monthly [DAY] [HH:MM], yearly, or every INTERVAL \
                     such as every 10m";

/// A parsed schedule spec. Compare, print and list it by [`Schedule::spec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    spec: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// Cron expressions and the shorthands rewritten to them.
    Calendar(Box<Cron>),
    /// Fires at the multiples of this many seconds since the epoch (≥ 1).
    Every(u64),
}

impl Schedule {
    /// Parses a schedule spec; Err is a one-line message naming what is wrong.
    pub fn parse(spec: &str) -> Result<Schedule, String> {
        let spec = spec.trim();
        let kind = parse_kind(spec).map_err(|msg| format!("schedule {spec:?}: {msg}"))?;
        Ok(Schedule {
            spec: spec.to_string(),
            kind,
        })
    }

    /// The first fire time strictly after `t`, in local time (the TZ
    /// environment variable applies). None if it never fires again: a
    /// calendar schedule past croner's last date (the start of year 5000),
    /// or an interval past the end of chrono's calendar.
    pub fn next_after(&self, t: DateTime<Local>) -> Option<DateTime<Local>> {
        match &self.kind {
            Kind::Calendar(cron) => next_on_calendar(cron, &t),
            Kind::Every(secs) => next_multiple(*secs, t),
        }
    }

    /// The spec as the user wrote it, trimmed (for listings).
    pub fn spec(&self) -> &str {
        &self.spec
    }
}

impl FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Schedule, String> {
        Schedule::parse(s)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec)
    }
}

/// The first time after `t` that `cron` matches on `t`'s wall clock.
fn next_on_calendar<Z: TimeZone>(cron: &Cron, t: &DateTime<Z>) -> Option<DateTime<Z>> {
    let zone = t.timezone();
    let mut from = t.with_timezone(&Exact(zone.clone()));
    // "Strictly after" is the scheduler's guarantee against running a job
    // twice at once; keep it even if the search ever answers `t` itself.
    for _ in 0..3 {
        let next = cron.find_next_occurrence(&from, false).ok()?;
        if next > from {
            return Some(next.with_timezone(&zone));
        }
        from = from.checked_add_signed(chrono::TimeDelta::seconds(1))?;
    }
    None
}

/// A time zone that says which instants read a wall clock time from its
/// UTC offsets alone: an offset counts if it is the one in force at the
/// instant it gives.
///
/// chrono 0.4.45's `Local` answers that question wrongly around a change
/// of clock: it lists the two instants of a repeated time latest first
/// (chrono issue #1625), where croner takes the first as the earlier, and
/// it counts the change's own instant on both sides (03:00 on the night
/// Berlin falls back to 02:00 is "ambiguous", 02:00 on the night it
/// springs to 03:00 exists). With it, croner ran `daily 02:30` at the
/// second 02:30, skipped the first pass of a repeated hour for wildcard
/// jobs, and for `hourly` answered 03:00 +02:00, the very instant of
/// 02:00 +01:00, over and over. The offsets from UTC, which every clock
/// reading goes through, are right, so this is right with a fixed chrono too.
#[derive(Debug, Clone, Copy)]
struct Exact<Z>(Z);

impl<Z: TimeZone> TimeZone for Exact<Z> {
    type Offset = Z::Offset;

    fn from_offset(offset: &Z::Offset) -> Self {
        Exact(Z::from_offset(offset))
    }

    fn offset_from_local_date(&self, local: &NaiveDate) -> MappedLocalTime<Z::Offset> {
        self.offset_from_local_datetime(&local.and_time(NaiveTime::MIN))
    }

    fn offset_from_local_datetime(&self, local: &NaiveDateTime) -> MappedLocalTime<Z::Offset> {
        // Candidates: the zone's own answer and the offsets in force a day
        // either side (offsets are within a day, and no zone changes its
        // clock twice in one).
        let day = chrono::TimeDelta::days(1);
        let mut offsets: Vec<Z::Offset> =
            [local.checked_sub_signed(day), local.checked_add_signed(day)]
                .into_iter()
                .flatten()
                .map(|utc| self.0.offset_from_utc_datetime(&utc))
                .collect();
        match self.0.offset_from_local_datetime(local) {
            MappedLocalTime::Single(o) => offsets.push(o),
            MappedLocalTime::Ambiguous(a, b) => offsets.extend([a, b]),
            MappedLocalTime::None => {}
        }
        let mut real: Vec<(NaiveDateTime, Z::Offset)> = offsets
            .into_iter()
            .filter_map(|o| {
                let utc = local.checked_sub_offset(o.fix())?;
                (self.0.offset_from_utc_datetime(&utc).fix() == o.fix()).then_some((utc, o))
            })
            .collect();
        real.sort_by_key(|(utc, _)| *utc);
        real.dedup_by_key(|(utc, _)| *utc);
        let mut real = real.into_iter().map(|(_, o)| o);
        match (real.next(), real.next_back()) {
            (Some(earlier), Some(later)) => MappedLocalTime::Ambiguous(earlier, later),
            (Some(only), None) => MappedLocalTime::Single(only),
            _ => MappedLocalTime::None,
        }
    }

    fn offset_from_utc_date(&self, utc: &NaiveDate) -> Z::Offset {
        self.offset_from_utc_datetime(&utc.and_time(NaiveTime::MIN))
    }

    fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> Z::Offset {
        self.0.offset_from_utc_datetime(utc)
    }
}

/// The first multiple of `secs` seconds since the epoch that is strictly
/// after `t`. `t`'s fraction of a second does not matter: the multiple at
/// or below `t`'s whole second is never after `t`.
fn next_multiple(secs: u64, t: DateTime<Local>) -> Option<DateTime<Local>> {
    let secs = i64::try_from(secs).ok()?;
    let next = t
        .timestamp()
        .div_euclid(secs)
        .checked_add(1)?
        .checked_mul(secs)?;
    Local.timestamp_opt(next, 0).single()
}

/// Parses a trimmed spec; the message does not repeat the spec.
fn parse_kind(spec: &str) -> Result<Kind, String> {
    let words: Vec<&str> = spec.split_whitespace().collect();
    let Some((first, args)) = words.split_first() else {
        return Err(format!("the schedule is empty ({FORMS})"));
    };
    let keyword = first.to_ascii_lowercase();
    let cron = match keyword.as_str() {
        "every" => return parse_interval(args).map(Kind::Every),
        "hourly" => {
            no_args(&keyword, args)?;
            "0 0 * * * *".to_string()
        }
        "daily" => {
            let (h, m) = match args {
                [] => (0, 0),
                [time] => parse_time(time)?,
                _ => return Err("too many words after daily (expected daily [HH:MM])".into()),
            };
            format!("0 {m} {h} * * *")
        }
        "weekly" => {
            let (day, time) = day_and_time(&keyword, args)?;
            let dow = day.map_or(Ok(1), parse_weekday)?;
            let (h, m) = time.map_or(Ok((0, 0)), parse_time)?;
            format!("0 {m} {h} * * {dow}")
        }
        "monthly" => {
            let (day, time) = day_and_time(&keyword, args)?;
            let dom = day.map_or(Ok("1".to_string()), parse_day_of_month)?;
            let (h, m) = time.map_or(Ok((0, 0)), parse_time)?;
            format!("0 {m} {h} {dom} * *")
        }
        "yearly" | "annually" => {
            no_args(&keyword, args)?;
            "0 0 0 1 1 *".to_string()
        }
        _ => return parse_cron(spec, words.len()).map(Kind::Calendar),
    };
    parse_cron(&cron, 6).map(Kind::Calendar)
}

fn no_args(keyword: &str, args: &[&str]) -> Result<(), String> {
    match args.first() {
        None => Ok(()),
        Some(extra) => Err(format!(
            "unexpected {extra:?} after {keyword} ({keyword} takes no time; \
             use a cron expression for other times)"
        )),
    }
}

/// Splits the optional `[DAY] [HH:MM]` of weekly and monthly; a lone word
/// with a colon is the time.
fn day_and_time<'a>(
    keyword: &str,
    args: &[&'a str],
) -> Result<(Option<&'a str>, Option<&'a str>), String> {
    match *args {
        [] => Ok((None, None)),
        [time] if time.contains(':') => Ok((None, Some(time))),
        [day] => Ok((Some(day), None)),
        [day, time] => Ok((Some(day), Some(time))),
        _ => Err(format!(
            "too many words after {keyword} (expected {keyword} [DAY] [HH:MM])"
        )),
    }
}

/// `HH:MM` (or `H:MM`) as (hour, minute).
fn parse_time(s: &str) -> Result<(u32, u32), String> {
    let not_a_time = || format!("{s:?} is not a time of day (expected HH:MM, e.g. 02:30)");
    let (h, m) = s.split_once(':').ok_or_else(not_a_time)?;
    let digits = |x: &str, lens: std::ops::RangeInclusive<usize>| {
        lens.contains(&x.len()) && x.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(h, 1..=2) || !digits(m, 2..=2) {
        return Err(not_a_time());
    }
    let (h, m): (u32, u32) = (
        h.parse().map_err(|_| not_a_time())?,
        m.parse().map_err(|_| not_a_time())?,
    );
    if h > 23 {
        return Err(format!("hour {h} is out of range (0-23)"));
    }
    if m > 59 {
        return Err(format!("minute {m} is out of range (0-59)"));
    }
    Ok((h, m))
}

/// A day name, as cron's day-of-week number (Sunday is 0).
fn parse_weekday(s: &str) -> Result<u32, String> {
    const DAYS: [&str; 7] = [
        "sunday",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
    ];
    let lower = s.to_ascii_lowercase();
    DAYS.iter()
        .position(|d| lower == *d || lower == d[..3])
        .map(|i| i as u32)
        .ok_or_else(|| {
            format!("{s:?} is not a day of the week (expected mon..sun or monday..sunday)")
        })
}

/// A day of the month, 1-31 or `last`, as a cron day-of-month field.
fn parse_day_of_month(s: &str) -> Result<String, String> {
    if s.eq_ignore_ascii_case("last") {
        return Ok("L".into());
    }
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{s:?} is not a day of the month (expected 1-31 or last)"
        ));
    }
    match s.parse::<u32>() {
        Ok(d @ 1..=31) => Ok(d.to_string()),
        _ => Err(format!("day of month {s} is out of range (1-31)")),
    }
}

/// `every` and its interval: numbers with units s, m, h, d, written
/// together or apart (`1h30m`, `1h 30m`), each unit at most once.
fn parse_interval(args: &[&str]) -> Result<u64, String> {
    let text = args.concat();
    if text.is_empty() {
        return Err("every needs an interval, such as every 10m or every 1h30m".into());
    }
    let too_long = || format!("the interval {text} is too long (at most 366d)");
    let mut total: u64 = 0;
    let mut seen = String::new();
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (number, after) = rest.split_at(digits);
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);
        if number.is_empty() || (unit.is_empty() && !after.is_empty()) {
            return Err(format!(
                "{text:?} is not an interval (expected whole numbers with units, \
                 such as 10m or 1h30m)"
            ));
        }
        let unit = unit.to_ascii_lowercase();
        let scale = match unit.as_str() {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "" => {
                return Err(format!(
                    "{number} in {text:?} has no unit (use s, m, h or d)"
                ));
            }
            _ => {
                return Err(format!(
                    "unknown unit {unit:?} in {text:?} (use s, m, h or d)"
                ));
            }
        };
        if seen.contains(unit.as_str()) {
            return Err(format!("the unit {unit} appears twice in {text:?}"));
        }
        seen.push_str(&unit);
        let n: u64 = number.parse().map_err(|_| too_long())?;
        total = n
            .checked_mul(scale)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(too_long)?;
        rest = after;
    }
    if total == 0 {
        return Err("the interval must be at least 1 second".into());
    }
    if total > MAX_INTERVAL_SECS {
        return Err(too_long());
    }
    Ok(total)
}

/// Parses a cron expression of `fields` words (or a nickname) with croner:
/// optional seconds, no year field, day of month OR day of week.
fn parse_cron(expr: &str, fields: usize) -> Result<Box<Cron>, String> {
    if let Some(nick) = expr.strip_prefix('@') {
        const NICKNAMES: [&str; 6] = ["yearly", "annually", "monthly", "weekly", "daily", "hourly"];
        if !NICKNAMES.iter().any(|n| n.eq_ignore_ascii_case(nick)) {
            return Err(format!(
                "unknown nickname @{nick} (known: @{})",
                NICKNAMES.join(", @")
            ));
        }
    } else if !(5..=6).contains(&fields) {
        return Err(format!("not a schedule: {FORMS}"));
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .dom_and_dow(false)
        .build()
        .parse(expr)
        .map_err(|e| format!("invalid cron expression: {e}"))?;
    // A pattern such as `0 0 31 2 *` is well-formed but matches no date;
    // say so now rather than let the job silently never run.
    let epoch = DateTime::UNIX_EPOCH.naive_utc();
    if cron.find_next_occurrence(&epoch, true).is_err() {
        return Err("the cron expression matches no date, so the job would never run".into());
    }
    Ok(Box::new(cron))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{FixedOffset, Timelike};

    /// A local wall clock time; the test dates avoid DST changes in any zone
    /// (mid-January, away from midnight switches).
    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Local> {
        Local
            .with_ymd_and_hms(y, mo, d, h, mi, s)
            .earliest()
            .expect("test time exists locally")
    }

    fn next(spec: &str, t: DateTime<Local>) -> DateTime<Local> {
        Schedule::parse(spec)
            .unwrap_or_else(|e| panic!("{e}"))
            .next_after(t)
            .expect("fires again")
    }

    fn err(spec: &str) -> String {
        Schedule::parse(spec).expect_err(spec)
    }

    /// Wednesday 2025-01-15 10:20:00.
    fn wed() -> DateTime<Local> {
        at(2025, 1, 15, 10, 20, 0)
    }

    #[test]
    fn hourly() {
        assert_eq!(next("hourly", wed()), at(2025, 1, 15, 11, 0, 0));
        // Strictly after: at a fire time, the next one.
        assert_eq!(
            next("hourly", at(2025, 1, 15, 11, 0, 0)),
            at(2025, 1, 15, 12, 0, 0)
        );
        assert_eq!(next("@hourly", wed()), at(2025, 1, 15, 11, 0, 0));
    }

    #[test]
    fn fraction_of_a_second_before_a_fire_time() {
        let t = at(2025, 1, 15, 10, 59, 59)
            .with_nanosecond(500_000_000)
            .unwrap();
        assert_eq!(next("hourly", t), at(2025, 1, 15, 11, 0, 0));
        let t = at(2025, 1, 15, 11, 0, 0).with_nanosecond(1).unwrap();
        assert_eq!(next("hourly", t), at(2025, 1, 15, 12, 0, 0));
    }

    #[test]
    fn daily() {
        assert_eq!(next("daily", wed()), at(2025, 1, 16, 0, 0, 0));
        assert_eq!(next("@daily", wed()), at(2025, 1, 16, 0, 0, 0));
        assert_eq!(next("daily 02:30", wed()), at(2025, 1, 16, 2, 30, 0));
        assert_eq!(
            next("Daily 2:30", at(2025, 1, 15, 1, 0, 0)),
            at(2025, 1, 15, 2, 30, 0)
        );
        assert_eq!(next("daily 23:59", wed()), at(2025, 1, 15, 23, 59, 0));
    }

    #[test]
    fn weekly() {
        // The 15th is a Wednesday: Monday is the 20th, Sunday the 19th.
        assert_eq!(next("weekly", wed()), at(2025, 1, 20, 0, 0, 0));
        assert_eq!(next("weekly sun 03:00", wed()), at(2025, 1, 19, 3, 0, 0));
        assert_eq!(next("WEEKLY Sunday 3:00", wed()), at(2025, 1, 19, 3, 0, 0));
        assert_eq!(next("weekly friday", wed()), at(2025, 1, 17, 0, 0, 0));
        assert_eq!(next("weekly wed 12:00", wed()), at(2025, 1, 15, 12, 0, 0));
        assert_eq!(next("weekly wed 09:00", wed()), at(2025, 1, 22, 9, 0, 0));
        assert_eq!(next("weekly 06:15", wed()), at(2025, 1, 20, 6, 15, 0));
        // Cron's nickname keeps cron's Sunday.
        assert_eq!(next("@weekly", wed()), at(2025, 1, 19, 0, 0, 0));
    }

    #[test]
    fn monthly() {
        assert_eq!(next("monthly", wed()), at(2025, 2, 1, 0, 0, 0));
        assert_eq!(next("@monthly", wed()), at(2025, 2, 1, 0, 0, 0));
        assert_eq!(next("monthly 15 04:00", wed()), at(2025, 2, 15, 4, 0, 0));
        assert_eq!(next("monthly 20", wed()), at(2025, 1, 20, 0, 0, 0));
        assert_eq!(next("monthly 03:00", wed()), at(2025, 2, 1, 3, 0, 0));
        assert_eq!(next("monthly last 22:00", wed()), at(2025, 1, 31, 22, 0, 0));
        assert_eq!(
            next("monthly last", at(2025, 2, 1, 0, 0, 0)),
            at(2025, 2, 28, 0, 0, 0)
        );
        // February has no 31st: it is skipped, not moved.
        assert_eq!(
            next("monthly 31", at(2025, 2, 1, 0, 0, 0)),
            at(2025, 3, 31, 0, 0, 0)
        );
    }

    #[test]
    fn yearly() {
        for spec in ["yearly", "annually", "@yearly", "@annually"] {
            assert_eq!(next(spec, wed()), at(2026, 1, 1, 0, 0, 0), "{spec}");
        }
    }

    #[test]
    fn cron_expressions() {
        // Weekdays at 04:30: Thursday the 16th.
        assert_eq!(next("30 4 * * 1-5", wed()), at(2025, 1, 16, 4, 30, 0));
        assert_eq!(next("30 4 * * mon-fri", wed()), at(2025, 1, 16, 4, 30, 0));
        // Six fields, seconds first.
        assert_eq!(next("*/15 * * * * *", wed()), at(2025, 1, 15, 10, 20, 15));
        assert_eq!(next("0 30 2 * * *", wed()), at(2025, 1, 16, 2, 30, 0));
        assert_eq!(
            next("*/10 * * * *", at(2025, 1, 15, 10, 25, 0)),
            at(2025, 1, 15, 10, 30, 0)
        );
        assert_eq!(next("0 0 1 jan,jul *", wed()), at(2025, 7, 1, 0, 0, 0));
        // Extra blanks are fine; the listing shows the spec trimmed.
        let s = Schedule::parse("  0 3  * * *  ").unwrap();
        assert_eq!(s.spec(), "0 3  * * *");
        assert_eq!(s.next_after(wed()), Some(at(2025, 1, 16, 3, 0, 0)));
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        // Vixie cron: the 13th OR a Friday; the next is Friday the 17th.
        assert_eq!(next("0 0 13 * fri", wed()), at(2025, 1, 17, 0, 0, 0));
        // `+` asks for both: the next Friday the 13th is in June 2025.
        assert_eq!(next("0 0 13 * +fri", wed()), at(2025, 6, 13, 0, 0, 0));
    }

    #[test]
    fn never_again() {
        let s = Schedule::parse("0 0 1 1 *").unwrap();
        assert_eq!(s.next_after(at(5000, 6, 1, 0, 0, 0)), None);
    }

    /// A zone whose offset changes from `before` to `after` (seconds east
    /// of UTC) at the UTC instant `at`, and which maps wall clock times to
    /// offsets as wrongly as chrono 0.4.45's `Local`: a repeated time lists
    /// its latest instant first, and the change's instant counts on both
    /// sides.
    #[derive(Debug, Clone, Copy)]
    struct Shift {
        at: i64,
        before: i32,
        after: i32,
    }

    /// Shift's offset carries the zone, for chrono's `DateTime::timezone`.
    #[derive(Debug, Clone, Copy)]
    struct ShiftOffset {
        zone: Shift,
        secs: i32,
    }

    impl Offset for ShiftOffset {
        fn fix(&self) -> FixedOffset {
            FixedOffset::east_opt(self.secs).unwrap()
        }
    }

    impl TimeZone for Shift {
        type Offset = ShiftOffset;

        fn from_offset(offset: &ShiftOffset) -> Self {
            offset.zone
        }

        fn offset_from_local_date(&self, local: &NaiveDate) -> MappedLocalTime<ShiftOffset> {
            self.offset_from_local_datetime(&local.and_time(NaiveTime::MIN))
        }

        fn offset_from_local_datetime(
            &self,
            local: &NaiveDateTime,
        ) -> MappedLocalTime<ShiftOffset> {
            let wall = local.and_utc().timestamp();
            let off = |secs| ShiftOffset { zone: *self, secs };
            let early = wall - i64::from(self.before) <= self.at;
            let late = wall - i64::from(self.after) >= self.at;
            match (early, late) {
                (true, true) => MappedLocalTime::Ambiguous(off(self.after), off(self.before)),
                (true, false) => MappedLocalTime::Single(off(self.before)),
                (false, true) => MappedLocalTime::Single(off(self.after)),
                (false, false) => MappedLocalTime::None,
            }
        }

        fn offset_from_utc_date(&self, utc: &NaiveDate) -> ShiftOffset {
            self.offset_from_utc_datetime(&utc.and_time(NaiveTime::MIN))
        }

        fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> ShiftOffset {
            let secs = if utc.and_utc().timestamp() < self.at {
                self.before
            } else {
                self.after
            };
            ShiftOffset { zone: *self, secs }
        }
    }

    /// The next `count` fire times of `spec` in `zone` after the UTC time
    /// `from` (month, day, hour of 2025), as UTC "DD HH:MM".
    fn fires_in(zone: Shift, spec: &str, from: (u32, u32, u32), count: usize) -> Vec<String> {
        let Kind::Calendar(cron) = Schedule::parse(spec).unwrap().kind else {
            panic!("{spec} is not a calendar schedule")
        };
        let (mo, d, h) = from;
        let mut t = chrono::Utc
            .with_ymd_and_hms(2025, mo, d, h, 0, 0)
            .unwrap()
            .with_timezone(&zone);
        let mut out = Vec::new();
        for _ in 0..count {
            t = next_on_calendar(&cron, &t).unwrap();
            out.push(t.naive_utc().format("%d %H:%M").to_string());
        }
        out
    }

    /// Europe/Berlin, 2025-10-26: at 01:00 UTC the clock goes from 03:00
    /// (+2) back to 02:00 (+1), so 02:00-03:00 happens twice.
    const FALL_BACK: Shift = Shift {
        at: 1_761_440_400,
        before: 7_200,
        after: 3_600,
    };
    /// Europe/Berlin, 2025-03-30: at 01:00 UTC the clock jumps from 02:00
    /// (+1) to 03:00 (+2), so 02:00-03:00 does not exist.
    const SPRING_FORWARD: Shift = Shift {
        at: 1_743_296_400,
        before: 3_600,
        after: 7_200,
    };

    #[test]
    fn dst_fall_back() {
        // 02:30 runs once, at the first pass (00:30 UTC), then 02:30 +1.
        assert_eq!(
            fires_in(FALL_BACK, "daily 02:30", (10, 25, 12), 2),
            ["26 00:30", "27 01:30"]
        );
        // A wildcard job runs in both passes: every half hour of real time.
        assert_eq!(
            fires_in(FALL_BACK, "*/30 * * * *", (10, 25, 23), 5),
            ["25 23:30", "26 00:00", "26 00:30", "26 01:00", "26 01:30"]
        );
        // Hourly: 02:00 +2, 02:00 +1, 03:00 +1, 04:00 +1 (03:00 +2 would be
        // 01:00 UTC again, the instant of 02:00 +1).
        assert_eq!(
            fires_in(FALL_BACK, "hourly", (10, 25, 23), 4),
            ["26 00:00", "26 01:00", "26 02:00", "26 03:00"]
        );
        // 03:00 happens once, at 02:00 UTC.
        assert_eq!(
            fires_in(FALL_BACK, "daily 03:00", (10, 25, 12), 1),
            ["26 02:00"]
        );
    }

    #[test]
    fn dst_spring_forward() {
        // 02:30 does not exist: it runs at 03:00 +2 (01:00 UTC), then 02:30 +2.
        assert_eq!(
            fires_in(SPRING_FORWARD, "daily 02:30", (3, 29, 12), 2),
            ["30 01:00", "31 00:30"]
        );
        // A wildcard job skips the missing hour.
        assert_eq!(
            fires_in(SPRING_FORWARD, "*/30 * * * *", (3, 29, 23), 5),
            ["29 23:30", "30 00:00", "30 00:30", "30 01:00", "30 01:30"]
        );
        // Hourly: 01:00 +1, then 03:00 +2 and 04:00 +2.
        assert_eq!(
            fires_in(SPRING_FORWARD, "hourly", (3, 29, 23), 3),
            ["30 00:00", "30 01:00", "30 02:00"]
        );
        // 02:00 does not exist either: 03:00 +2 again.
        assert_eq!(
            fires_in(SPRING_FORWARD, "daily 02:00", (3, 29, 12), 1),
            ["30 01:00"]
        );
    }

    /// The interval's fire times are the multiples of its length since the epoch.
    fn check_aligned(spec: &str, secs: i64) {
        let s = Schedule::parse(spec).unwrap();
        for t in [wed(), at(2025, 1, 15, 10, 29, 59), at(2024, 7, 1, 3, 7, 11)] {
            for t in [t, t.with_nanosecond(999_999_999).unwrap()] {
                let n = s.next_after(t).unwrap();
                assert_eq!(n.timestamp().rem_euclid(secs), 0, "{spec} after {t}");
                assert!(
                    n > t && n.timestamp() - t.timestamp() <= secs,
                    "{spec} after {t}: {n}"
                );
            }
            // From a fire time, the next slot.
            let n = s.next_after(t).unwrap();
            assert_eq!(s.next_after(n).unwrap().timestamp(), n.timestamp() + secs);
        }
    }

    #[test]
    fn intervals_align_to_the_epoch() {
        check_aligned("every 10m", 600);
        check_aligned("every 1h30m", 5_400);
        check_aligned("every 1h 30m", 5_400);
        check_aligned("EVERY 1H", 3_600);
        check_aligned("every 1d12h", 129_600);
        check_aligned("every 7s", 7);
        check_aligned("every 366d", 366 * 86_400);
        // From 10:25 UTC the next slot is 10:30 UTC, whatever the local offset.
        let utc = |h, m| chrono::Utc.with_ymd_and_hms(2025, 1, 15, h, m, 0).unwrap();
        let n = next("every 10m", utc(10, 25).with_timezone(&Local));
        assert_eq!(n, utc(10, 30));
    }

    #[test]
    fn every_2s_gives_consecutive_slots() {
        let s = Schedule::parse("every 2s").unwrap();
        let mut t = at(2025, 1, 15, 10, 20, 1);
        let mut slots = Vec::new();
        for _ in 0..5 {
            t = s.next_after(t).unwrap();
            slots.push(t.timestamp());
        }
        let first = at(2025, 1, 15, 10, 20, 2).timestamp();
        assert_eq!(first % 2, 0);
        assert_eq!(slots, [first, first + 2, first + 4, first + 6, first + 8]);
    }

    #[test]
    fn display_from_str_and_spec() {
        let s: Schedule = " weekly sun 03:00 ".parse().unwrap();
        assert_eq!(s.spec(), "weekly sun 03:00");
        assert_eq!(s.to_string(), "weekly sun 03:00");
        assert_eq!(s, Schedule::parse("weekly sun 03:00").unwrap());
    }

    #[test]
    fn invalid_specs() {
        assert_eq!(
            err("daily 25:00"),
            r#"schedule "daily 25:00": hour 25 is out of range (0-23)"#
        );
        assert_eq!(
            err("daily 02:61"),
            r#"schedule "daily 02:61": minute 61 is out of range (0-59)"#
        );
        assert_eq!(
            err("daily 2h30"),
            r#"schedule "daily 2h30": "2h30" is not a time of day (expected HH:MM, e.g. 02:30)"#
        );
        assert_eq!(
            err("every 0s"),
            r#"schedule "every 0s": the interval must be at least 1 second"#
        );
        assert_eq!(
            err("every 0h0m"),
            r#"schedule "every 0h0m": the interval must be at least 1 second"#
        );
        assert_eq!(
            err("every 367d"),
            r#"schedule "every 367d": the interval 367d is too long (at most 366d)"#
        );
        assert_eq!(
            err("every 99999999999999999999s"),
            r#"schedule "every 99999999999999999999s": the interval 99999999999999999999s is too long (at most 366d)"#
        );
        assert_eq!(
            err("every 10"),
            r#"schedule "every 10": 10 in "10" has no unit (use s, m, h or d)"#
        );
        assert_eq!(
            err("every 1.5h"),
            r#"schedule "every 1.5h": "1.5h" is not an interval (expected whole numbers with units, such as 10m or 1h30m)"#
        );
        assert_eq!(
            err("every 10w"),
            r#"schedule "every 10w": unknown unit "w" in "10w" (use s, m, h or d)"#
        );
        assert_eq!(
            err("every 1h1h"),
            r#"schedule "every 1h1h": the unit h appears twice in "1h1h""#
        );
        assert_eq!(
            err("every"),
            r#"schedule "every": every needs an interval, such as every 10m or every 1h30m"#
        );
        assert_eq!(
            err("weekly funday"),
            r#"schedule "weekly funday": "funday" is not a day of the week (expected mon..sun or monday..sunday)"#
        );
        assert_eq!(
            err("monthly 32"),
            r#"schedule "monthly 32": day of month 32 is out of range (1-31)"#
        );
        assert_eq!(
            err("monthly 0 01:00"),
            r#"schedule "monthly 0 01:00": day of month 0 is out of range (1-31)"#
        );
        assert_eq!(
            err("hourly 5"),
            r#"schedule "hourly 5": unexpected "5" after hourly (hourly takes no time; use a cron expression for other times)"#
        );
        assert_eq!(
            err("daily 01:00 02:00"),
            r#"schedule "daily 01:00 02:00": too many words after daily (expected daily [HH:MM])"#
        );
        assert!(err("").starts_with(r#"schedule "": the schedule is empty (expected a cron"#));
        assert!(
            err("fortnightly").starts_with(r#"schedule "fortnightly": not a schedule: expected"#)
        );
        assert_eq!(
            err("@reboot"),
            r#"schedule "@reboot": unknown nickname @reboot (known: @yearly, @annually, @monthly, @weekly, @daily, @hourly)"#
        );
        assert!(
            err("61 * * * *").starts_with(r#"schedule "61 * * * *": invalid cron expression: "#)
        );
        assert!(
            err("0 0 0 1 1 * 2030").starts_with(r#"schedule "0 0 0 1 1 * 2030": not a schedule"#)
        );
        assert_eq!(
            err("0 0 31 2 *"),
            r#"schedule "0 0 31 2 *": the cron expression matches no date, so the job would never run"#
        );
        for e in [err("daily 25:00"), err("61 * * * *"), err("")] {
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
