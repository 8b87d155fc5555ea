//! Which snapshots a prune keeps: borg's retention rules, exactly.
//!
//! The rules are borg's (`borg help prune`, `prune_within` and
//! `prune_split` in borg's source), so a policy moved from borg keeps the
//! same snapshots:
//!
//! 1. `within D` keeps every snapshot newer than `now - D` (strictly).
//! 2. Then `last`, `hourly`, `daily`, `weekly`, `monthly`, `yearly`, in that
//!    order. Each walks the snapshots from newest to oldest and looks at the
//!    period of each (local time: the second for `last`, as borg's
//!    `--keep-last` is its `--keep-secondly`; Y-M-D H; Y-M-D; ISO year and
//!    ISO week; Y-M; Y). A snapshot whose period differs from the previous
//!    snapshot's is the newest of its period; the rule keeps it unless an
//!    earlier rule already did, and stops after keeping N. A period whose
//!    newest snapshot was kept by an earlier rule is thereby used up for
//!    this rule too: it does not reach for the next one in that period.
//! 3. A rule that runs out of snapshots before keeping N also keeps the
//!    oldest snapshot, if no rule kept it yet (borg ≥ 1.2), so a new
//!    repository keeps its first snapshot while the policy fills up.
//!
//! Everything else is pruned. Periods follow the local wall clock (the TZ
//! environment variable), as borg's do; like borg's strftime keys, two
//! instants that read the same on the clock (the repeated hour when it
//! falls back) share a period.
//!
//! Snapshots with the same time are ordered by their index in the input,
//! the lower index counting as the newer (Python's stable sort in borg does
//! the same with its list order), so the result does not depend on
//! anything but the input. Same-second snapshots share every period, `last`
//! included: of two at once, `last 2` keeps one.

use chrono::{DateTime, Datelike, Local, NaiveDateTime, TimeZone, Timelike};
use serde::{Deserialize, Serialize};

/// How many snapshots of each kind a prune keeps. Zero (or `None`) turns a
/// rule off; a `keep_within_secs` of 0 counts as off, as it keeps nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
    /// Keep everything newer than this many seconds before `now`.
    pub keep_within_secs: Option<u64>,
}

/// The rules that count periods, in borg's order.
#[derive(Debug, Clone, Copy)]
enum Rule {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Rule {
    const ALL: [Rule; 6] = [
        Rule::Last,
        Rule::Hourly,
        Rule::Daily,
        Rule::Weekly,
        Rule::Monthly,
        Rule::Yearly,
    ];

    fn name(self) -> &'static str {
        match self {
            Rule::Last => "last",
            Rule::Hourly => "hourly",
            Rule::Daily => "daily",
            Rule::Weekly => "weekly",
            Rule::Monthly => "monthly",
            Rule::Yearly => "yearly",
        }
    }

    fn count(self, p: &Policy) -> u32 {
        match self {
            Rule::Last => p.keep_last,
            Rule::Hourly => p.keep_hourly,
            Rule::Daily => p.keep_daily,
            Rule::Weekly => p.keep_weekly,
            Rule::Monthly => p.keep_monthly,
            Rule::Yearly => p.keep_yearly,
        }
    }

    /// The period `t` falls in, as a comparable key: the fields of borg's
    /// strftime pattern for the rule, read off the local wall clock.
    fn period(self, t: &Time) -> Period {
        let n = match t {
            Time::Local(n) => n,
            // Outside chrono's calendar (hundreds of millennia away): a
            // period of its own, so the rules still see a distinct snapshot.
            Time::Raw(secs) => return Period::Raw(*secs),
        };
        let (y, mo, d, h) = (n.year(), n.month() as i32, n.day() as i32, n.hour() as i32);
        Period::Fields(match self {
            Rule::Last => [y, mo, d, h, n.minute() as i32, n.second() as i32],
            Rule::Hourly => [y, mo, d, h, 0, 0],
            Rule::Daily => [y, mo, d, 0, 0, 0],
            Rule::Weekly => {
                let w = n.iso_week();
                [w.year(), w.week() as i32, 0, 0, 0, 0]
            }
            Rule::Monthly => [y, mo, 0, 0, 0, 0],
            Rule::Yearly => [y, 0, 0, 0, 0, 0],
        })
    }
}

/// A snapshot time as the rules see it.
enum Time {
    Local(NaiveDateTime),
    Raw(i64),
}

impl Time {
    /// `secs` on the local wall clock. Checked, where chrono's own
    /// conversion would panic past the end of its calendar.
    fn of(secs: i64) -> Time {
        DateTime::from_timestamp(secs, 0)
            .map(|utc| utc.naive_utc())
            .and_then(|utc| utc.checked_add_offset(Local.offset_from_utc_datetime(&utc)))
            .map_or(Time::Raw(secs), Time::Local)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Period {
    Fields([i32; 6]),
    Raw(i64),
}

impl Policy {
    /// True when no rule is set (prune must refuse: it would delete everything).
    pub fn is_empty(&self) -> bool {
        self.within().is_none() && Rule::ALL.iter().all(|r| r.count(self) == 0)
    }

    /// "last 3, daily 7, weekly 4" — for logs and listings. Rules in the
    /// order they apply; "no rules" for an empty policy.
    pub fn describe(&self) -> String {
        let within = self.within().map(|s| format!("within {}", duration(s)));
        let counts = Rule::ALL
            .iter()
            .filter(|r| r.count(self) > 0)
            .map(|r| format!("{} {}", r.name(), r.count(self)));
        let parts: Vec<String> = within.into_iter().chain(counts).collect();
        if parts.is_empty() {
            "no rules".into()
        } else {
            parts.join(", ")
        }
    }

    /// The `within` span, if it is on.
    fn within(&self) -> Option<u64> {
        self.keep_within_secs.filter(|&s| s > 0)
    }
}

/// `secs` as borg-style units, largest first: 90061 is "1d1h1m1s".
fn duration(secs: u64) -> String {
    let mut out = String::new();
    let mut rest = secs;
    for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if rest >= len {
            out.push_str(&format!("{}{unit}", rest / len));
            rest %= len;
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// The fate of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub keep: bool,
    /// e.g. "last #1", "daily #3", "within 2d", "weekly[oldest] #2"; empty when pruned
    pub reason: String,
}

/// `times[i]` is snapshot i's time (unix seconds, any order). Returns one
/// Decision per input, same order. An empty policy keeps nothing: callers
/// check [`Policy::is_empty`] first.
pub fn decide(policy: &Policy, times: &[i64], now: i64) -> Vec<Decision> {
    // Newest first; the lower index first among equal times.
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by(|&a, &b| times[b].cmp(&times[a]).then(a.cmp(&b)));

    let mut reasons: Vec<Option<String>> = vec![None; times.len()];
    if let Some(within) = policy.within() {
        // i128: `now - within` cannot overflow.
        let cutoff = i128::from(now) - i128::from(within);
        let label = format!("within {}", duration(within));
        for (i, &t) in times.iter().enumerate() {
            if i128::from(t) > cutoff {
                reasons[i] = Some(label.clone());
            }
        }
    }

    let local: Vec<Time> = times.iter().map(|&t| Time::of(t)).collect();
    for rule in Rule::ALL {
        let n = rule.count(policy);
        if n > 0 {
            split(rule, n, &order, &local, &mut reasons);
        }
    }

    reasons
        .into_iter()
        .map(|r| Decision {
            keep: r.is_some(),
            reason: r.unwrap_or_default(),
        })
        .collect()
}

/// borg's `prune_split`: keeps the newest snapshot of each of the `n`
/// newest periods not already kept, then the oldest snapshot if the
/// periods ran out first.
fn split(rule: Rule, n: u32, order: &[usize], local: &[Time], reasons: &mut [Option<String>]) {
    let mut last = None;
    let mut kept = 0;
    for &i in order {
        let period = rule.period(&local[i]);
        if last == Some(period) {
            continue;
        }
        last = Some(period);
        if reasons[i].is_none() {
            kept += 1;
            reasons[i] = Some(format!("{} #{kept}", rule.name()));
            if kept == n {
                return;
            }
        }
    }
    if let Some(&oldest) = order.last()
        && reasons[oldest].is_none()
    {
        reasons[oldest] = Some(format!("{}[oldest] #{}", rule.name(), kept + 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Days, NaiveDate};

    /// Unix time of a local wall clock time (noon and other daytime hours
    /// exist in every zone on every day used here).
    fn local(y: i32, m: u32, d: u32, h: u32) -> i64 {
        Local
            .with_ymd_and_hms(y, m, d, h, 0, 0)
            .earliest()
            .expect("test time exists locally")
            .timestamp()
    }

    fn kept(decisions: &[Decision]) -> Vec<usize> {
        (0..decisions.len())
            .filter(|&i| decisions[i].keep)
            .collect()
    }

    #[test]
    fn a_year_of_dailies() {
        // One snapshot at noon each day of 2024 (a leap year), 366 in all.
        let start = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
        let dates: Vec<NaiveDate> = (0..366).map(|i| start + Days::new(i)).collect();
        let times: Vec<i64> = dates
            .iter()
            .map(|d| local(d.year(), d.month(), d.day(), 12))
            .collect();
        let policy = Policy {
            keep_daily: 7,
            keep_weekly: 4,
            keep_monthly: 6,
            ..Policy::default()
        };
        let now = local(2024, 12, 31, 13);
        let decisions = decide(&policy, &times, now);

        // daily 7: Dec 31 (Tue) back to Dec 25.
        // weekly 4: Dec 31 and 30 are ISO week 2025-W01, whose newest (Dec
        //   31) daily kept; Dec 29..23 are 2024-W52, newest Dec 29, also
        //   kept by daily. So weekly's own four are the Sundays that end
        //   W51, W50, W49, W48: Dec 22, 15, 8, 1.
        // monthly 6: December's newest (Dec 31) is kept; then the last day
        //   of Nov, Oct, Sep, Aug, Jul, Jun.
        let want = [
            ((12, 31), "daily #1"),
            ((12, 30), "daily #2"),
            ((12, 29), "daily #3"),
            ((12, 28), "daily #4"),
            ((12, 27), "daily #5"),
            ((12, 26), "daily #6"),
            ((12, 25), "daily #7"),
            ((12, 22), "weekly #1"),
            ((12, 15), "weekly #2"),
            ((12, 8), "weekly #3"),
            ((12, 1), "weekly #4"),
            ((11, 30), "monthly #1"),
            ((10, 31), "monthly #2"),
            ((9, 30), "monthly #3"),
            ((8, 31), "monthly #4"),
            ((7, 31), "monthly #5"),
            ((6, 30), "monthly #6"),
        ];
        let got: Vec<((u32, u32), &str)> = kept(&decisions)
            .into_iter()
            .rev()
            .map(|i| {
                (
                    (dates[i].month(), dates[i].day()),
                    decisions[i].reason.as_str(),
                )
            })
            .collect();
        assert_eq!(got, want);
        for d in &decisions {
            assert_eq!(d.keep, !d.reason.is_empty());
        }
    }

    #[test]
    fn keep_last() {
        let times: Vec<i64> = (0..10).map(|i| 1_700_000_000 + i * 3_600).collect();
        let policy = Policy {
            keep_last: 3,
            ..Policy::default()
        };
        let d = decide(&policy, &times, 1_800_000_000);
        assert_eq!(kept(&d), [7, 8, 9]);
        assert_eq!(d[9].reason, "last #1");
        assert_eq!(d[8].reason, "last #2");
        assert_eq!(d[7].reason, "last #3");
        assert_eq!(
            d[0],
            Decision {
                keep: false,
                reason: String::new()
            }
        );
    }

    #[test]
    fn keep_within() {
        let now = 1_700_000_000;
        let day = 86_400;
        let times = [now - day, now - 2 * day, now - 3 * day, now + 60];
        let policy = Policy {
            keep_within_secs: Some(2 * day as u64),
            ..Policy::default()
        };
        let d = decide(&policy, &times, now);
        // Strictly newer than now - 2d: exactly 2 days old is pruned.
        assert_eq!(kept(&d), [0, 3]);
        assert_eq!(d[0].reason, "within 2d");
        // Within first, then the other rules skip what it kept.
        let policy = Policy {
            keep_last: 1,
            ..policy
        };
        let d = decide(&policy, &times, now);
        assert_eq!(kept(&d), [0, 1, 3]);
        assert_eq!(d[1].reason, "last #1");
    }

    #[test]
    fn oldest_is_kept_when_a_rule_runs_short() {
        let times = [
            local(2024, 3, 10, 12),
            local(2024, 3, 5, 12),
            local(2024, 2, 20, 12),
            local(2024, 2, 10, 12),
        ];
        let policy = Policy {
            keep_daily: 2,
            keep_monthly: 3,
            ..Policy::default()
        };
        let d = decide(&policy, &times, local(2024, 3, 11, 12));
        // daily: Mar 10, Mar 5. monthly: March's newest is kept already,
        // February's newest (Feb 20) is #1, then no more months: the oldest
        // (Feb 10) is #2.
        let reasons: Vec<&str> = d.iter().map(|d| d.reason.as_str()).collect();
        assert_eq!(
            reasons,
            ["daily #1", "daily #2", "monthly #1", "monthly[oldest] #2"]
        );

        // A rule that reaches its count keeps no oldest.
        let policy = Policy {
            keep_daily: 2,
            keep_monthly: 1,
            ..Policy::default()
        };
        let d = decide(&policy, &times, local(2024, 3, 11, 12));
        assert_eq!(kept(&d), [0, 1, 2]);

        // Nor one that an earlier rule already kept.
        let policy = Policy {
            keep_last: 4,
            keep_yearly: 5,
            ..Policy::default()
        };
        let d = decide(&policy, &times, local(2024, 3, 11, 12));
        assert_eq!(d[3].reason, "last #4");
    }

    #[test]
    fn empty_policy() {
        let policy = Policy::default();
        assert!(policy.is_empty());
        assert_eq!(policy.describe(), "no rules");
        let zero_within = Policy {
            keep_within_secs: Some(0),
            ..Policy::default()
        };
        assert!(zero_within.is_empty());
        let d = decide(&policy, &[1, 2, 3], 10);
        assert!(d.iter().all(|d| !d.keep && d.reason.is_empty()));
        assert!(decide(&policy, &[], 10).is_empty());
        assert!(
            !Policy {
                keep_yearly: 1,
                ..Policy::default()
            }
            .is_empty()
        );
        assert!(
            !Policy {
                keep_within_secs: Some(1),
                ..Policy::default()
            }
            .is_empty()
        );
    }

    #[test]
    fn describe() {
        let policy = Policy {
            keep_last: 3,
            keep_daily: 7,
            keep_weekly: 4,
            ..Policy::default()
        };
        assert_eq!(policy.describe(), "last 3, daily 7, weekly 4");
        let policy = Policy {
            keep_within_secs: Some(90_061),
            keep_hourly: 24,
            keep_monthly: 12,
            keep_yearly: 10,
            ..Policy::default()
        };
        assert_eq!(
            policy.describe(),
            "within 1d1h1m1s, hourly 24, monthly 12, yearly 10"
        );
    }

    #[test]
    fn unsorted_input_gives_the_same_decisions() {
        let sorted: Vec<i64> = (0..60).map(|i| 1_700_000_000 + i * 7 * 3_600).collect();
        // A fixed permutation: i * 37 mod 60 (37 is prime to 60).
        let perm: Vec<usize> = (0..60).map(|i| i * 37 % 60).collect();
        let shuffled: Vec<i64> = perm.iter().map(|&i| sorted[i]).collect();
        let policy = Policy {
            keep_last: 2,
            keep_hourly: 3,
            keep_daily: 4,
            keep_weekly: 2,
            ..Policy::default()
        };
        let now = 1_800_000_000;
        let a = decide(&policy, &sorted, now);
        let b = decide(&policy, &shuffled, now);
        for (j, &i) in perm.iter().enumerate() {
            assert_eq!(b[j], a[i], "snapshot {i}");
        }
    }

    #[test]
    fn duplicate_times() {
        let t = local(2024, 5, 5, 12);
        // Two at once, then one ten seconds older. The lower index is the
        // newer of the pair; both share a second, so `last` counts them once.
        let d = decide(
            &Policy {
                keep_last: 2,
                ..Policy::default()
            },
            &[t, t, t - 10],
            t + 1,
        );
        assert_eq!(kept(&d), [0, 2]);
        assert_eq!(d[2].reason, "last #2");
        // The tie goes the same way whichever comes first in the input.
        let d = decide(
            &Policy {
                keep_daily: 1,
                ..Policy::default()
            },
            &[t - 10, t, t],
            t + 1,
        );
        assert_eq!(kept(&d), [1]);
        // All the same time: one kept, the oldest being the last index.
        let d = decide(
            &Policy {
                keep_daily: 3,
                ..Policy::default()
            },
            &[t, t, t],
            t + 1,
        );
        assert_eq!(kept(&d), [0, 2]);
        assert_eq!(d[2].reason, "daily[oldest] #2");
    }

    #[test]
    fn extreme_times_do_not_panic() {
        let (min, max) = (
            DateTime::<chrono::Utc>::MIN_UTC,
            DateTime::<chrono::Utc>::MAX_UTC,
        );
        let times = [
            i64::MIN,
            i64::MAX,
            0,
            -400 * 86_400,
            253_402_300_799,
            min.timestamp(),
            max.timestamp(),
        ];
        let policy = Policy {
            keep_within_secs: Some(u64::MAX),
            keep_last: 1,
            keep_hourly: 1,
            keep_daily: 1,
            keep_weekly: 1,
            keep_monthly: 1,
            keep_yearly: 9,
        };
        let d = decide(&policy, &times, i64::MIN);
        assert_eq!(d.len(), times.len());
        let d = decide(
            &Policy {
                keep_yearly: 9,
                ..Policy::default()
            },
            &times,
            0,
        );
        assert!(d.iter().all(|d| d.keep));
    }

    #[test]
    fn policy_serde_defaults_missing_fields() {
        let p: Policy = serde_json::from_str(r#"{"keep_daily": 7}"#).unwrap();
        assert_eq!(
            p,
            Policy {
                keep_daily: 7,
                ..Policy::default()
            }
        );
        let back: Policy = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}
