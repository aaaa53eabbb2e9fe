//! Parsers for the Linux procfs files the unix attestor reads (see proc_pid_stat(5) and
//! proc_pid_status(5)).

/// The fields of `/proc/<pid>/stat` the attestor uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ProcStat {
    /// Process state (field 3), for example `R`, `S` or `Z`.
    pub(super) state: char,
    /// Start time after boot in clock ticks (field 22).
    pub(super) start_time: u64,
}

impl ProcStat {
    /// Returns whether the process has exited: a zombie (`Z`) or dead (`X`, `x`).
    pub(super) fn has_exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Identities from `/proc/<pid>/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ProcStatus {
    /// Effective user id (second field of `Uid:`).
    pub(super) effective_uid: u32,
    /// Effective group id (second field of `Gid:`).
    pub(super) effective_gid: u32,
    /// Supplementary group ids in the kernel's order (`Groups:`).
    pub(super) groups: Vec<u32>,
}

/// Parses the content of `/proc/<pid>/stat`.
pub(super) fn parse_stat(text: &str) -> Result<ProcStat, String> {
    // Field 2 is the command name in parentheses, and the name itself may contain spaces and
    // ')', so the remaining fields start after the last ')'.
    let close = text
        .rfind(')')
        .ok_or("missing ')' after the command name")?;
    let mut fields = text[close + 1..].split_ascii_whitespace();
    let state_field = fields.next().ok_or("missing state field")?;
    let mut state_chars = state_field.chars();
    let state = match (state_chars.next(), state_chars.next()) {
        (Some(state), None) => state,
        _ => return Err(format!("invalid state field {state_field:?}")),
    };
    // Field 22 is the 19th field after the state (field 3).
    let start_field = fields
        .nth(18)
        .ok_or("fewer than 22 fields, so no start time")?;
    let start_time = start_field
        .parse()
        .map_err(|err| format!("invalid start time {start_field:?}: {err}"))?;
    Ok(ProcStat { state, start_time })
}

/// Parses the `Uid:`, `Gid:` and `Groups:` lines of `/proc/<pid>/status`.
pub(super) fn parse_status(text: &str) -> Result<ProcStatus, String> {
    let mut effective_uid = None;
    let mut effective_gid = None;
    let mut groups = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key {
            "Uid" => effective_uid = Some(parse_effective_id("Uid", value)?),
            "Gid" => effective_gid = Some(parse_effective_id("Gid", value)?),
            "Groups" => groups = Some(parse_ids("Groups", value)?),
            _ => {}
        }
    }
    Ok(ProcStatus {
        effective_uid: effective_uid.ok_or("missing Uid line")?,
        effective_gid: effective_gid.ok_or("missing Gid line")?,
        groups: groups.ok_or("missing Groups line")?,
    })
}

/// Returns the effective id from a `Uid:` or `Gid:` value: real, effective, saved, filesystem.
fn parse_effective_id(key: &str, value: &str) -> Result<u32, String> {
    let ids = parse_ids(key, value)?;
    match ids.as_slice() {
        [_real, effective, _saved, _filesystem] => Ok(*effective),
        _ => Err(format!("{key} line has {} ids, expected 4", ids.len())),
    }
}

fn parse_ids(key: &str, value: &str) -> Result<Vec<u32>, String> {
    value
        .split_ascii_whitespace()
        .map(|id| {
            id.parse()
                .map_err(|err| format!("invalid id {id:?} in {key} line: {err}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_line(comm: &str, state: &str, start_time: &str) -> String {
        // Fields 4 to 21 are filler; 22 is the start time, and more fields follow.
        let filler: Vec<String> = (4..22).map(|n| n.to_string()).collect();
        format!(
            "1234 ({comm}) {state} {} {start_time} 23 24\n",
            filler.join(" ")
        )
    }

    #[test]
    fn stat_reads_state_and_start_time() {
        let stat = parse_stat(&stat_line("sleep", "S", "987654")).expect("must parse");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.start_time, 987_654);
        assert!(!stat.has_exited());
    }

    #[test]
    fn stat_handles_parentheses_and_spaces_in_name() {
        let stat = parse_stat(&stat_line("a) (b c", "Z", "42")).expect("must parse");
        assert_eq!(stat.state, 'Z');
        assert_eq!(stat.start_time, 42);
        assert!(stat.has_exited());
    }

    #[test]
    fn stat_rejects_malformed_content() {
        assert!(parse_stat("1234 sleep S 1 2").is_err());
        assert!(parse_stat("1234 (sleep) S 1 2 3").is_err());
        assert!(parse_stat(&stat_line("sleep", "S", "-1")).is_err());
        assert!(parse_stat(&stat_line("sleep", "SS", "1")).is_err());
        assert!(parse_stat("1234 (sleep)").is_err());
    }

    #[test]
    fn status_reads_effective_ids_and_groups() {
        let text = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\n\
                    Uid:\t1000\t1001\t1002\t1003\nGid:\t2000\t2001\t2002\t2003\n\
                    FDSize:\t64\nGroups:\t4 24 27 \nNgid:\t0\n";
        let status = parse_status(text).expect("must parse");
        assert_eq!(status.effective_uid, 1001);
        assert_eq!(status.effective_gid, 2001);
        assert_eq!(status.groups, [4, 24, 27]);
    }

    #[test]
    fn status_accepts_empty_groups() {
        let text = "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n";
        let status = parse_status(text).expect("must parse");
        assert!(status.groups.is_empty());
    }

    #[test]
    fn status_rejects_missing_or_short_lines() {
        let missing_groups = "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        let err = parse_status(missing_groups).expect_err("must reject");
        assert_eq!(err, "missing Groups line");

        let short_uid = "Uid:\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n";
        let err = parse_status(short_uid).expect_err("must reject");
        assert_eq!(err, "Uid line has 2 ids, expected 4");

        let bad_group = "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t4 x\n";
        let err = parse_status(bad_group).expect_err("must reject");
        assert!(err.contains("\"x\" in Groups line"), "{err}");
    }
}
