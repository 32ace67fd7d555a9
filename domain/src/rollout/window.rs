//! Maintenance windows per site, in the site's own time zone: `Mon-Fri 22:00-04:00`,
//! `Sat,Sun 00:00-24:00`, `daily 01:00-03:00`. A window whose end is not after its start runs
//! past midnight into the next day (Friday 22:00 → Saturday 04:00 belongs to Friday).

use std::fmt;

use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ZonedDateTime};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "maintenance window '{spec}': {problem} (example: 'Mon-Fri 22:00-04:00' with a time zone like Europe/Paris)"
)]
pub struct WindowError {
    pub spec: String,
    pub problem: String,
}

#[derive(Debug, Clone)]
pub struct Window {
    spec: String,
    /// Days on which a window starts, Monday = index 0.
    days: [bool; 7],
    start_min: u32,
    end_min: u32,
    tz: TimeZone,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn day_index(s: &str) -> Option<usize> {
    let s = s.trim().to_ascii_lowercase();
    DAYS.iter().position(|d| s.starts_with(d) && s.len() >= 3)
}

fn minutes(s: &str) -> Option<u32> {
    let (h, m) = s.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    ((h < 24 && m < 60) || (h == 24 && m == 0)).then_some(h * 60 + m)
}

impl Window {
    /// Parses `DAYS HH:MM-HH:MM` in time zone `tz` (an IANA name such as `Europe/Paris`).
    pub fn parse(spec: &str, tz: &str) -> Result<Window, WindowError> {
        let err = |problem: &str| WindowError {
            spec: spec.to_owned(),
            problem: problem.to_owned(),
        };
        let tz = TimeZone::get(tz).map_err(|_| err(&format!("unknown time zone '{tz}'")))?;
        let (days_part, times) = spec
            .trim()
            .rsplit_once(' ')
            .ok_or_else(|| err("expected DAYS HH:MM-HH:MM"))?;
        let mut days = [false; 7];
        for part in days_part.split(',').map(str::trim) {
            if matches!(
                part.to_ascii_lowercase().as_str(),
                "daily" | "*" | "every day"
            ) {
                days = [true; 7];
            } else if let Some((a, b)) = part.split_once('-') {
                let (a, b) = (day_index(a), day_index(b));
                let (Some(a), Some(b)) = (a, b) else {
                    return Err(err(&format!("'{part}' is not a day range like Mon-Fri")));
                };
                let mut d = a;
                loop {
                    days[d] = true;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            } else {
                let d = day_index(part)
                    .ok_or_else(|| err(&format!("'{part}' is not a day (Mon … Sun, daily)")))?;
                days[d] = true;
            }
        }
        let (a, b) = times
            .split_once('-')
            .ok_or_else(|| err("expected a time range like 22:00-04:00"))?;
        let start_min =
            minutes(a).ok_or_else(|| err(&format!("'{a}' is not a time like 22:00")))?;
        let end_min = minutes(b).ok_or_else(|| err(&format!("'{b}' is not a time like 04:00")))?;
        if start_min == end_min {
            return Err(err(
                "start and end are equal; use 00:00-24:00 for a whole day",
            ));
        }
        Ok(Window {
            spec: spec.trim().to_owned(),
            days,
            start_min,
            end_min,
            tz,
        })
    }

    fn local(&self, at: Timestamp) -> ZonedDateTime {
        at.to_zoned_datetime(self.tz.clone())
    }

    /// Whether the window is open at `at`.
    pub fn is_open(&self, at: Timestamp) -> bool {
        let z = self.local(at);
        let now = u32::from(z.hour().unsigned_abs()) * 60 + u32::from(z.minute().unsigned_abs());
        let today = weekday_index(z.weekday());
        let yesterday = (today + 6) % 7;
        if self.start_min < self.end_min {
            self.days[today] && now >= self.start_min && now < self.end_min
        } else {
            (self.days[today] && now >= self.start_min)
                || (self.days[yesterday] && now < self.end_min)
        }
    }

    /// The next time the window opens at or after `at` (`at` itself if open), within 8 days.
    pub fn next_open(&self, at: Timestamp) -> Option<Timestamp> {
        if self.is_open(at) {
            return Some(at);
        }
        let z = self.local(at);
        let (hour, minute) = (
            i8::try_from(self.start_min / 60).ok()?,
            i8::try_from(self.start_min % 60).ok()?,
        );
        (0..8).find_map(|offset| {
            let day = z.date().checked_add(jiff::Span::new().days(offset)).ok()?;
            if !self.days[weekday_index(day.weekday())] {
                return None;
            }
            let opens = day
                .at(hour, minute, 0, 0)
                .to_zoned_datetime(self.tz.clone())
                .ok()?
                .timestamp();
            (opens > at).then_some(opens)
        })
    }
}

fn weekday_index(w: Weekday) -> usize {
    usize::try_from(w.to_monday_zero_offset()).unwrap_or(0)
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.spec, self.tz.iana_name().unwrap_or("?"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn overnight_window_in_local_time() {
        // 2026-11-27 is a Friday. Paris is UTC+1 in November.
        let w = Window::parse("Mon-Fri 22:00-04:00", "Europe/Paris").unwrap();
        assert!(!w.is_open(at("2026-11-27T20:59:00Z")), "Fri 21:59 Paris");
        assert!(w.is_open(at("2026-11-27T21:00:00Z")), "Fri 22:00 Paris");
        assert!(
            w.is_open(at("2026-11-28T02:59:00Z")),
            "Sat 03:59 Paris: Friday's window"
        );
        assert!(!w.is_open(at("2026-11-28T03:00:00Z")), "Sat 04:00 Paris");
        assert!(
            !w.is_open(at("2026-11-28T21:30:00Z")),
            "Sat 22:30: no window on Saturday"
        );
        assert!(
            !w.is_open(at("2026-11-30T02:00:00Z")),
            "Mon 03:00: Sunday had no window"
        );
        assert_eq!(
            w.next_open(at("2026-11-28T12:00:00Z")),
            Some(at("2026-11-30T21:00:00Z")),
            "Sat noon → Mon 22:00 Paris"
        );
        assert_eq!(
            w.next_open(at("2026-11-27T21:30:00Z")),
            Some(at("2026-11-27T21:30:00Z"))
        );
    }

    #[test]
    fn day_lists_and_whole_days() {
        let w = Window::parse("Sat,Sun 00:00-24:00", "UTC").unwrap();
        assert!(w.is_open(at("2026-11-28T00:00:00Z")));
        assert!(w.is_open(at("2026-11-29T23:59:00Z")));
        assert!(!w.is_open(at("2026-11-30T00:00:00Z")));
        let d = Window::parse("daily 01:00-03:00", "UTC").unwrap();
        assert!(d.is_open(at("2026-11-25T02:00:00Z")));
        let wrap = Window::parse("Fri-Mon 10:00-11:00", "UTC").unwrap();
        assert!(
            wrap.is_open(at("2026-11-29T10:30:00Z")),
            "Sunday is inside Fri-Mon"
        );
        assert!(
            !wrap.is_open(at("2026-11-25T10:30:00Z")),
            "Wednesday is not"
        );
    }

    #[test]
    fn refusals() {
        for (spec, tz, needle) in [
            ("Mon-Fri 22:00-04:00", "Mars/Olympus", "time zone"),
            ("Someday 22:00-04:00", "UTC", "not a day"),
            ("Mon 25:00-04:00", "UTC", "not a time"),
            ("Mon 10:00-10:00", "UTC", "equal"),
            ("22:00-04:00", "UTC", "expected DAYS"),
        ] {
            let e = Window::parse(spec, tz).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }
}
