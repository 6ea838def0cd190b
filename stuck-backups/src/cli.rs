//! The flags of `longhorn-guard doctor` and `longhorn-guard prune` and what each command prints;
//! the cli only dispatches to [`run_doctor`] and [`run_prune`] with a Kubernetes client.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct DoctorArgs {
    /// Longhorn's namespace.
    #[arg(short, long, env = "LHG_NAMESPACE", default_value = longhorn_types::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// A non-terminal Backup older than this many minutes needs attention even without a known
    /// reason; prune never deletes a Backup younger than this.
    #[arg(long, default_value_t = 15)]
    pub stuck_after_minutes: u64,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(clap::Args)]
pub struct DoctorCommandArgs {
    #[command(flatten)]
    pub doctor: DoctorArgs,
    /// The guard's namespace, where its policy ConfigMap is (checked for exemptions of
    /// Longhorn's own service account).
    #[arg(long, env = "LHG_GUARD_NAMESPACE", default_value = crate::guard_policy::DEFAULT_GUARD_NAMESPACE)]
    pub guard_namespace: String,
    /// The webhook's policy ConfigMap (key `policy.yaml`).
    #[arg(long, default_value = crate::guard_policy::DEFAULT_POLICY_CONFIGMAP)]
    pub guard_policy_configmap: String,
}

#[derive(clap::Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub doctor: DoctorArgs,
    /// Delete. Without it, only print what would be deleted.
    #[arg(long, conflicts_with = "restore")]
    pub yes: bool,
    /// Restore file written before anything is deleted (must not exist).
    #[arg(long, conflicts_with = "restore")]
    pub restore_file: Option<PathBuf>,
    /// Recreate the Backups of this restore file (written by an earlier `prune --yes`),
    /// marked with the label `longhorn-guard.io/restored-by-prune` that the guard's policy
    /// must exempt (README, Operator tools). Deletes nothing.
    #[arg(long, value_name = "RESTORE_FILE")]
    pub restore: Option<PathBuf>,
    /// Deletes per second.
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
}

/// How a command prints its result.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// The diagnosis options of the shared `doctor`/`prune` flags.
pub fn doctor_options(args: &DoctorArgs) -> crate::DoctorOptions {
    crate::DoctorOptions {
        namespace: args.namespace.clone(),
        stuck_after: std::time::Duration::from_secs(args.stuck_after_minutes * 60),
    }
}

/// `doctor`: the report and the guard-policy check, printed; exit code 0 when nothing needs
/// attention, 1 when something does.
pub async fn run_doctor(args: DoctorCommandArgs, client: kube::Client) -> anyhow::Result<ExitCode> {
    let report = crate::doctor(client.clone(), &doctor_options(&args.doctor)).await?;
    let guard_policy = crate::check_guard_policy(
        client,
        &crate::GuardPolicyOptions {
            namespace: args.guard_namespace,
            configmap: args.guard_policy_configmap,
            longhorn_namespace: args.doctor.namespace.clone(),
        },
    )
    .await;
    match args.doctor.output {
        Output::Table => print!(
            "{}\n{}\n",
            crate::render::doctor_text(&report),
            guard_policy.describe()
        ),
        Output::Json => {
            let mut json = serde_json::to_value(&report)?;
            json["guardPolicy"] = serde_json::to_value(&guard_policy)?;
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
    }
    Ok(
        if report.needs_attention > 0 || !guard_policy.findings().is_empty() {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        },
    )
}

/// `prune` (or `prune --restore FILE`), printed.
pub async fn run_prune(args: PruneArgs, client: kube::Client) -> anyhow::Result<()> {
    if let Some(file) = &args.restore {
        return run_restore(&args.doctor, file, client).await;
    }
    let restore_file = args.restore_file.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "longhorn-guard-prune-{}-{}.yaml",
            args.doctor.namespace,
            k8s_openapi::jiff::Timestamp::now().as_second()
        ))
    });
    let options = crate::PruneOptions {
        doctor: doctor_options(&args.doctor),
        yes: args.yes,
        restore_file,
        deletes_per_second: args.rate,
    };
    let outcome = crate::prune(client, &options).await?;
    match args.doctor.output {
        Output::Table => print!("{}", crate::render::prune_text(&outcome)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&outcome)?),
    }
    Ok(())
}

async fn run_restore(
    args: &DoctorArgs,
    file: &std::path::Path,
    client: kube::Client,
) -> anyhow::Result<()> {
    let outcome = crate::restore(client, &args.namespace, file).await?;
    match args.output {
        Output::Table => print!("{}", crate::render::restore_text(&outcome)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&outcome)?),
    }
    if !outcome.refused.is_empty() {
        anyhow::bail!(
            "{} of the Backups in {} were not restored (see above); the file is unchanged",
            outcome.refused.len(),
            file.display()
        );
    }
    Ok(())
}
