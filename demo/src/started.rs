//! What a run of the demo started and must undo on every exit path (error, SIGINT, SIGTERM).

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use kube::Client;

use crate::guard;
use crate::processes::{Children, ControlPlane};

/// What the cleanup path must undo besides processes: the webhook registration.
#[derive(Default)]
pub(crate) struct Registrations {
    pub(crate) webhooks: Mutex<Vec<(Client, String)>>,
}

/// What a run of the demo started and must undo on every exit path: its work directory,
/// child processes, webhook registrations and local control plane.
pub(crate) struct Started {
    pub(crate) work: PathBuf,
    pub(crate) children: Children,
    pub(crate) registrations: Registrations,
    pub(crate) control_plane: Option<ControlPlane>,
}

impl Started {
    pub(crate) fn new() -> anyhow::Result<Self> {
        let work = std::env::temp_dir().join(format!(
            "lhg-demo-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        Ok(Self {
            work,
            children: Children::default(),
            registrations: Registrations::default(),
            control_plane: None,
        })
    }

    /// Remembers a webhook registration to delete at the end.
    pub(crate) fn registered(&self, client: &Client, name: String) {
        self.registrations
            .webhooks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((client.clone(), name));
    }

    /// Unregisters the webhooks, stops every process and the control plane, removes the work
    /// directory.
    pub(crate) async fn clean_up(self, failed: bool) {
        if failed {
            eprintln!("[demo] stopping everything it started ...");
        }
        let webhooks: Vec<(Client, String)> = self
            .registrations
            .webhooks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        for (client, name) in webhooks {
            guard::unregister_webhook(&client, &name).await;
        }
        self.children.stop("", Duration::from_secs(10)).await;
        if let Some(mut cp) = self.control_plane {
            cp.stop().await;
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}
