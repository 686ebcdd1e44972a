//! Reads a policy's `schedule` and, when it is wrong, says so in one line with the field's real
//! bounds (`minute 61 is out of range 0-59`), before the cron parser gets to it: the parser's
//! own messages span several lines, echo the input with a caret, and state off-by-one bounds
//! ("Minutes must be less than 59").

/// One field of a cron, seconds first, with the values the `cron` crate accepts.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names accepted for values (lowercase), e.g. `jan` or `sunday`.
    names: &'static [(&'static str, u32)],
    /// `?` (any) is allowed.
    any: bool,
    /// Said after the range, e.g. "(1 is Sunday)".
    note: &'static str,
}

const MONTHS: &[(&str, u32)] = &[
    ("jan", 1),
    ("january", 1),
    ("feb", 2),
    ("february", 2),
    ("mar", 3),
    ("march", 3),
    ("apr", 4),
    ("april", 4),
    ("may", 5),
    ("jun", 6),
    ("june", 6),
    ("jul", 7),
    ("july", 7),
    ("aug", 8),
    ("august", 8),
    ("sep", 9),
    ("september", 9),
    ("oct", 10),
    ("october", 10),
    ("nov", 11),
    ("november", 11),
    ("dec", 12),
    ("december", 12),
];

const DAYS: &[(&str, u32)] = &[
    ("sun", 1),
    ("sunday", 1),
    ("mon", 2),
    ("monday", 2),
    ("tue", 3),
    ("tues", 3),
    ("tuesday", 3),
    ("wed", 4),
    ("wednesday", 4),
    ("thu", 5),
    ("thurs", 5),
    ("thursday", 5),
    ("fri", 6),
    ("friday", 6),
    ("sat", 7),
    ("saturday", 7),
];

const FIELDS: [Field; 7] = [
    Field {
        name: "second",
        min: 0,
        max: 59,
        names: &[],
        any: false,
        note: "",
    },
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
        any: false,
        note: "",
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
        any: false,
        note: "",
    },
    Field {
        name: "day-of-month",
        min: 1,
        max: 31,
        names: &[],
        any: true,
        note: "",
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: MONTHS,
        any: false,
        note: " (or JAN-DEC)",
    },
    Field {
        name: "day-of-week",
        min: 1,
        max: 7,
        names: DAYS,
        any: true,
        note: " (SUN-SAT)",
    },
    Field {
        name: "year",
        min: 1970,
        max: 2100,
        names: &[],
        any: false,
        note: "",
    },
];

/// The shorthands the cron parser knows.
pub(super) const SHORTHANDS: &[&str] = &["@yearly", "@monthly", "@weekly", "@daily", "@hourly"];

/// What is wrong with a schedule: a one-line message and, when we can tell, what to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CronProblem {
    pub message: String,
    pub hint: Option<String>,
}

const FORM: &str = "a cron has six or seven fields, seconds first: \
\"sec min hour day-of-month month day-of-week [year]\", e.g. \"0 */15 * * * *\" (every 15 minutes, UTC)";

/// Parses a schedule, or says in one line what is wrong with it.
pub(super) fn parse(text: &str) -> Result<cron::Schedule, CronProblem> {
    let problem = |message: String, hint: Option<String>| CronProblem {
        message: format!("schedule {text:?}: {message}"),
        hint,
    };
    let trimmed = text.trim();
    if let Some(word) = trimmed.strip_prefix('@') {
        if !SHORTHANDS.contains(&trimmed) {
            let (name, arg) = word.split_once(' ').unwrap_or((word, ""));
            return Err(problem(
                format!("@{name} is not a shorthand ecs-janitor knows"),
                Some(shorthand_hint(name, arg.trim())),
            ));
        }
    } else {
        let fields: Vec<&str> = trimmed.split_whitespace().collect();
        match fields.len() {
            6 | 7 => check_fields(&fields).map_err(|m| problem(m, Some(FORM.into())))?,
            5 => {
                // Classic Unix cron: say what is out of range in it too, as the seconds-first
                // reading would have it.
                let mut with_seconds = vec!["0"];
                with_seconds.extend(&fields);
                let hint = format!(
                    "{FORM}; for the same times write \"0 {trimmed}\" \
                     (with day names for any day-of-week numbers)"
                );
                // "It has 5 fields" once: in the message, or in the hint when the message
                // is about a value.
                return Err(match check_fields(&with_seconds) {
                    Err(m) => problem(m, Some(format!("it has 5 fields, but {hint}"))),
                    Ok(()) => problem("it has 5 fields".into(), Some(hint)),
                });
            }
            n => return Err(problem(format!("it has {n} fields"), Some(FORM.into()))),
        }
    }
    let schedule = text.parse::<cron::Schedule>().map_err(|e| {
        // Our checks should have caught it; if not, the parser's words, on one line.
        let said = e.to_string();
        let last = said
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty() && !l.starts_with('^') && *l != trimmed)
            .unwrap_or("not a valid cron")
            .to_string();
        problem(last, Some(FORM.into()))
    })?;
    // A schedule with no time to come would leave its policy silently idle: a day no month
    // has (31 February) is refused. One whose years have all passed was right when written, and
    // refusing it would stop every policy at the next start: it loads, with a warning
    // ([`ran_its_course`]).
    if schedule.upcoming(chrono::Utc).next().is_none() && !years_passed(trimmed) {
        return Err(problem(
            "it never fires: no time to come matches it".into(),
            Some(
                "check the day of the month against the month (February has no 30th or 31st, \
                 April no 31st) and the year field, which must reach a year to come"
                    .into(),
            ),
        ));
    }
    Ok(schedule)
}

/// Whether `text` is a seven-field cron that would fire but for its year field.
fn years_passed(text: &str) -> bool {
    let fields: Vec<&str> = text.split_whitespace().collect();
    fields.len() == 7
        && format!("{} *", fields[..6].join(" "))
            .parse::<cron::Schedule>()
            .is_ok_and(|s| s.upcoming(chrono::Utc).next().is_some())
}

/// A warning for a policy whose schedule's years have all passed: it will not run again.
pub(super) fn ran_its_course(schedule: &cron::Schedule, text: &str) -> Option<String> {
    schedule.upcoming(chrono::Utc).next().is_none().then(|| {
        format!(
            "schedule {text:?} has no time to come (its years have passed): the policy will not \
             run again; remove it or give it years to come"
        )
    })
}

fn shorthand_hint(name: &str, arg: &str) -> String {
    let known = SHORTHANDS.join(", ");
    if name == "every" {
        let (n, unit) = arg.split_at(arg.find(|c: char| !c.is_ascii_digit()).unwrap_or(arg.len()));
        if let Ok(n) = n.parse::<u32>() {
            let cron = match unit {
                "s" if (1..60).contains(&n) => Some(format!("*/{n} * * * * *")),
                "m" if (1..60).contains(&n) => Some(format!("0 */{n} * * * *")),
                "h" if (1..24).contains(&n) => Some(format!("0 0 */{n} * * *")),
                _ => None,
            };
            if let Some(cron) = cron {
                return format!(
                    "write every {arg} as the cron \"{cron}\"; the shorthands are {known}"
                );
            }
        }
    }
    format!("the shorthands are {known}; or write a cron: {FORM}")
}

/// Checks every field of a six- or seven-field cron; the first problem, in words.
fn check_fields(fields: &[&str]) -> Result<(), String> {
    for (text, field) in fields.iter().zip(FIELDS.iter()) {
        for item in text.split(',') {
            check_item(item, field)?;
        }
    }
    Ok(())
}

fn check_item(item: &str, f: &Field) -> Result<(), String> {
    if item.is_empty() {
        return Err(format!("{} has an empty list item", f.name));
    }
    let (base, step) = match item.split_once('/') {
        Some((b, s)) => (b, Some(s)),
        None => (item, None),
    };
    if let Some(step) = step {
        match step.parse::<u32>() {
            Ok(0) => return Err(format!("{} step /0 never advances; use /1 or more", f.name)),
            Ok(_) => {}
            Err(_) => return Err(format!("{} step {step:?} is not a whole number", f.name)),
        }
    }
    match base {
        "*" => Ok(()),
        "?" if f.any => Ok(()),
        "?" => Err(format!(
            "{} does not take ? (only day-of-month and day-of-week do); use *",
            f.name
        )),
        _ => match base.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (value(a, f)?, value(b, f)?);
                if a > b {
                    return Err(format!(
                        "{} range {base} goes backwards; the start must not be after the end",
                        f.name
                    ));
                }
                Ok(())
            }
            None => value(base, f).map(|_| ()),
        },
    }
}

/// One value of field `f`, a number in range or a name it accepts.
fn value(text: &str, f: &Field) -> Result<u32, String> {
    let range = || format!("{}-{}{}", f.min, f.max, f.note);
    if let (Ok(n), true) = (text.parse::<u64>(), f.names == DAYS) {
        // Cron dialects number the week differently (the parser's 1 is Sunday, Unix cron's
        // Monday): "1-5" meant for weekdays would run Sunday to Thursday. Names only.
        let day = |n: u64| {
            DAYS.iter()
                .find(|(name, v)| name.len() == 3 && u64::from(*v) == n)
                .map(|(name, _)| name.to_ascii_uppercase())
        };
        let here = day(n).unwrap_or_else(|| "no day".into());
        // Unix cron: 0 and 7 are Sunday, 1 Monday, ..., 6 Saturday; 8 and above no day.
        let unix = (n <= 7)
            .then(|| day(n % 7 + 1))
            .flatten()
            .unwrap_or_else(|| "no day".into());
        return Err(format!(
            "day-of-week {n} is a number, and crons disagree on which day it is ({here} here, \
             {unix} in Unix cron); write the day's name, e.g. MON-FRI for weekdays"
        ));
    }
    if let Ok(n) = text.parse::<u64>() {
        return match u32::try_from(n) {
            Ok(n) if (f.min..=f.max).contains(&n) => Ok(n),
            _ => Err(format!("{} {n} is out of range {}", f.name, range())),
        };
    }
    let lower = text.to_ascii_lowercase();
    if let Some((_, v)) = f.names.iter().find(|(name, _)| *name == lower) {
        return Ok(*v);
    }
    if f.names == DAYS {
        Err(format!(
            "day-of-week {text:?} is not a day's name; use SUN-SAT (or the full names)"
        ))
    } else if f.names.is_empty() {
        Err(format!(
            "{} {text:?} is not a number in range {}",
            f.name,
            range()
        ))
    } else {
        Err(format!(
            "{} {text:?} is neither a number nor a name; use {}",
            f.name,
            range()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> String {
        parse(text).unwrap_err().message
    }

    #[test]
    fn out_of_range_values_name_the_field_and_its_real_bounds() {
        let table = [
            ("0 61 * * * *", "minute 61 is out of range 0-59"),
            ("60 * * * * *", "second 60 is out of range 0-59"),
            ("0 0 24 * * *", "hour 24 is out of range 0-23"),
            ("0 0 0 32 * *", "day-of-month 32 is out of range 1-31"),
            ("0 0 0 0 * *", "day-of-month 0 is out of range 1-31"),
            ("0 0 0 * 13 *", "month 13 is out of range 1-12"),
            ("0 0 0 * * 8", "day-of-week 8 is a number, and crons disagree on which day it is (no day here, no day in Unix cron)"),
            ("0 0 3 * * 1-5", "day-of-week 1 is a number, and crons disagree on which day it is (SUN here, MON in Unix cron); write the day's name, e.g. MON-FRI"),
            ("0 0 3 * * 0", "(no day here, SUN in Unix cron)"),
            ("0 0 0 * * * 2200", "year 2200 is out of range 1970-2100"),
            ("0 5-2 * * * *", "minute range 5-2 goes backwards"),
            ("0 */0 * * * *", "minute step /0 never advances"),
            ("0 0 0 * * Funday", "day-of-week \"Funday\" is not a day's name; use SUN-SAT"),
            ("0 0 0 * JANUAR *", "month \"JANUAR\" is neither"),
            ("0 1,,2 * * * *", "minute has an empty list item"),
            ("? * * * * *", "second does not take ?"),
            ("61 * * * *", "minute 61 is out of range 0-59"),
            ("*/15 * * * *", "it has 5 fields"),
            ("* * *", "it has 3 fields"),
            ("@every 5m", "@every is not a shorthand"),
            ("@reboot", "@reboot is not a shorthand"),
        ];
        for (cron, want) in table {
            let got = message(cron);
            assert!(got.contains(want), "{cron}: {got}");
            assert!(got.starts_with(&format!("schedule {cron:?}: ")), "{got}");
            assert!(!got.contains('\n'), "{cron}: not one line: {got}");
        }
    }

    #[test]
    fn valid_crons_and_shorthands_parse() {
        for ok in [
            "0 */15 * * * *",
            "0 30 9 * * Mon-Fri",
            "0 0 3 ? * SUN",
            "0 0 0 1 JAN-MAR * 2030",
            "*/10 * * * * *",
            "@daily",
            "@hourly",
            "0 0,30 8-18 * * MON-FRI",
            "0 0 3 * * SAT,SUN",
        ] {
            assert!(parse(ok).is_ok(), "{ok}: {:?}", parse(ok).err());
        }
    }

    /// A schedule that never fires would leave its policy idle with nothing to show for it
    /// (found trying `0 0 3 31 2 *`, 31 February, and a year gone by: both were accepted).
    #[test]
    fn a_schedule_that_never_fires_is_refused() {
        for never in [
            "0 0 3 31 2 *",
            "0 0 3 30 FEB *",
            "0 0 0 31 4 *",
            "0 0 3 31 2 * 2020-2030",
        ] {
            let p = parse(never).unwrap_err();
            assert!(
                p.message
                    .ends_with("it never fires: no time to come matches it"),
                "{never}: {p:?}"
            );
            assert!(p.hint.unwrap().contains("February has no 30th or 31st"));
        }
        assert!(
            parse("0 0 3 29 2 *").is_ok(),
            "29 February comes in leap years"
        );
        // Years all past: it was right when written, and loads with a warning.
        let done = parse("0 0 3 * * * 2020-2021").unwrap();
        assert!(ran_its_course(&done, "0 0 3 * * * 2020-2021")
            .unwrap()
            .contains("its years have passed"));
        assert!(ran_its_course(&parse("0 0 3 * * *").unwrap(), "").is_none());
    }

    #[test]
    fn hints_say_what_to_write() {
        let hint = parse("@every 5m").unwrap_err().hint.unwrap();
        assert!(hint.contains("\"0 */5 * * * *\""), "{hint}");
        let hint = parse("*/15 * * * *").unwrap_err().hint.unwrap();
        assert!(hint.contains("\"0 */15 * * * *\""), "{hint}");
        assert!(
            !hint.contains("5 fields"),
            "said once, in the message: {hint}"
        );
    }
}
