//! Human output of doctor and prune: aligned tables, ages like `3d4h`.

use std::fmt::Write;

use crate::{BackupFinding, DoomedVolume, PruneOutcome, Report, RestoreOutcome};

/// `3d4h`, `5h2m`, `12m`, `40s`.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    let (d, h, m) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h{m}m"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

fn finding_rows<'a>(findings: impl Iterator<Item = &'a BackupFinding>) -> Vec<Vec<String>> {
    let mut rows = vec![
        [
            "AGE",
            "VOLUME",
            "BACKUP",
            "STATE",
            "SNAPSHOT",
            "RECURRING JOB",
            "WHY",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for f in findings {
        rows.push(vec![
            age(f.age_seconds),
            f.volume.clone(),
            f.name.clone(),
            f.state.clone(),
            f.snapshot.clone(),
            f.recurring_job.clone().unwrap_or_else(|| "-".into()),
            f.reasons
                .iter()
                .map(|r| r.describe())
                .collect::<Vec<_>>()
                .join("; "),
        ]);
    }
    rows
}

/// The doctor's table of volumes with Backups that cannot finish.
fn doomed_volume_rows(volumes: &[DoomedVolume]) -> Vec<Vec<String>> {
    let mut rows = vec![
        [
            "VOLUME",
            "BACKUPS",
            "OLDEST",
            "LAST COMPLETED BACKUP",
            "RECURRING JOBS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for v in volumes {
        rows.push(vec![
            v.volume.clone(),
            v.backups.len().to_string(),
            age(v.oldest_age_seconds),
            if v.last_backup_at.is_empty() {
                "never".into()
            } else {
                v.last_backup_at.clone()
            },
            if v.recurring_jobs.is_empty() {
                "-".into()
            } else {
                v.recurring_jobs
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(",")
            },
        ]);
    }
    rows
}

/// The doctor report as text.
pub fn doctor_text(r: &Report) -> String {
    let mut out = String::new();
    let states: Vec<String> = r
        .backups_by_state
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "namespace {}: {} Backups ({})",
        r.namespace,
        r.total_backups,
        if states.is_empty() {
            "none".into()
        } else {
            states.join(", ")
        }
    );
    let stuck: Vec<&BackupFinding> = r.non_terminal().collect();
    if stuck.is_empty() {
        let _ = writeln!(out, "\nno non-terminal Backups");
    } else {
        let _ = writeln!(out, "\nnon-terminal Backups, oldest first:");
        out.push_str(&table(&finding_rows(stuck.into_iter())));
    }
    if !r.recurring_jobs.is_empty() {
        let _ = writeln!(out, "\nrecurring jobs behind them:");
        for (job, n) in &r.recurring_jobs {
            let _ = writeln!(out, "  {job}: {n}");
        }
    }
    if !r.doomed_volumes.is_empty() {
        let _ = writeln!(
            out,
            "\nvolumes with Backups that cannot finish (snapshot gone); each costs longhorn-manager a reconcile every ~30 s until pruned, and holds its volume's throttle slot until stuckAfterSeconds old:"
        );
        out.push_str(&table(&doomed_volume_rows(&r.doomed_volumes)));
    }
    let _ = writeln!(out, "\nLonghorn settings:");
    if r.settings.is_empty() {
        let _ = writeln!(out, "  (none of the relevant settings found)");
    }
    for (k, v) in &r.settings {
        let _ = writeln!(out, "  {k} = {v:?}");
    }
    let held = r.findings.iter().filter(|f| f.prune_hold.is_some()).count();
    if held > 0 {
        let _ = writeln!(
            out,
            "\n{held} Backups have their snapshot gone but are younger than the stuck threshold: not removable yet"
        );
    }
    let _ = writeln!(
        out,
        "\n{} Backups need attention; {} can be removed safely (non-terminal or Error, snapshot gone, no backup URL, older than the stuck threshold):\n  longhorn-guard prune -n {}          # dry run\n  longhorn-guard prune -n {} --yes    # delete, after writing a restore file",
        r.needs_attention, r.prune_eligible, r.namespace, r.namespace
    );
    out
}

/// The prune outcome as text.
pub fn prune_text(o: &PruneOutcome) -> String {
    let mut out = String::new();
    if o.planned.is_empty() {
        let _ = writeln!(
            out,
            "nothing to prune: no Backup is non-terminal or Error with its snapshot gone, no backup URL and older than the stuck threshold"
        );
        return out;
    }
    let _ = writeln!(
        out,
        "{} Backups {}:",
        o.planned.len(),
        if o.dry_run {
            "would be deleted (dry run; add --yes to delete)"
        } else {
            "eligible"
        }
    );
    out.push_str(&table(&finding_rows(o.planned.iter())));
    if let Some(f) = &o.restore_file {
        let ns = o.planned.first().map_or("", |p| p.namespace.as_str());
        let _ = writeln!(
            out,
            "\nrestore file: {} (longhorn-guard prune -n {ns} --restore {})",
            f.display(),
            f.display()
        );
    }
    if !o.dry_run {
        let _ = writeln!(out, "deleted {}", o.deleted.len());
        for (name, why) in &o.skipped {
            let _ = writeln!(out, "left alone {name}: {why}");
        }
    }
    out
}

/// The restore outcome as text.
pub fn restore_text(o: &RestoreOutcome) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "restore from {}: {} restored, {} already present, {} refused",
        o.file.display(),
        o.restored.len(),
        o.already_present.len(),
        o.refused.len()
    );
    for name in &o.restored {
        let _ = writeln!(out, "restored {name}");
    }
    for name in &o.already_present {
        let _ = writeln!(out, "already present {name}");
    }
    for (name, why) in &o.refused {
        let _ = writeln!(out, "refused {name}: {why}");
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(super::age(40), "40s");
        assert_eq!(super::age(12 * 60 + 5), "12m");
        assert_eq!(super::age(5 * 3600 + 2 * 60), "5h2m");
        assert_eq!(super::age(3 * 86_400 + 4 * 3600 + 59), "3d4h");
        assert_eq!(super::age(-5), "0s");
    }
}
