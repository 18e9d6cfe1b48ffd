//! FAT timestamps from Unix time.

use fatfs::{Date, DateTime, Time};

fn civil(days: i64) -> (i64, u16, u16) {
    let (y, m, d) = herd_clock::civil_from_days(days);
    (y, m as u16, d as u16)
}

/// FAT date and time of `unix` seconds, clamped to 1980-01-01..2107-12-31.
pub(crate) fn to_fat(unix: u32) -> FatStamp {
    FatStamp(to_datetime(unix))
}

/// A FAT timestamp ready to encode.
pub(crate) struct FatStamp(DateTime);

impl FatStamp {
    /// (date, time, 10 ms units) as stored in directory entries.
    pub(crate) fn encode(&self) -> (u16, u16, u8) {
        let d = self.0.date;
        let t = self.0.time;
        (
            ((d.year - 1980) << 9) | (d.month << 5) | d.day,
            (t.hour << 11) | (t.min << 5) | (t.sec / 2),
            0,
        )
    }
}

fn to_datetime(unix: u32) -> DateTime {
    let (y, m, d) = civil(i64::from(unix / 86_400));
    let secs = unix % 86_400;
    let (date, time) = if y < 1980 {
        (
            Date {
                year: 1980,
                month: 1,
                day: 1,
            },
            Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        )
    } else if y > 2107 {
        (
            Date {
                year: 2107,
                month: 12,
                day: 31,
            },
            Time {
                hour: 23,
                min: 59,
                sec: 58,
                millis: 0,
            },
        )
    } else {
        (
            Date {
                year: y as u16,
                month: m,
                day: d,
            },
            Time {
                hour: (secs / 3600) as u16,
                min: (secs / 60 % 60) as u16,
                sec: (secs % 60) as u16,
                millis: 0,
            },
        )
    };
    DateTime { date, time }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        let t = to_datetime(1_700_000_000); // 2023-11-14 22:13:20 UTC
        assert_eq!((t.date.year, t.date.month, t.date.day), (2023, 11, 14));
        assert_eq!((t.time.hour, t.time.min, t.time.sec), (22, 13, 20));
        assert_eq!(to_datetime(0).date.year, 1980);
        let leap = to_datetime(951_782_400); // 2000-02-29
        assert_eq!((leap.date.month, leap.date.day), (2, 29));
    }
}
