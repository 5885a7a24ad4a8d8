//! `hookgate spool list|show|retry|drop`: operator commands on the spool's
//! folders. They work beside a running gateway: it picks up what they change
//! within a second (its rescan). `list` shows no personal data: ids, routes,
//! ages, attempts, sizes and the last error (a status or an error kind).

use super::record::{self, Id};
use super::store::{Layout, State};
use std::io::Write;
use std::path::Path;

/// Where a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Waiting for delivery.
    Queued,
    /// In the dead letters.
    Dead,
    /// Set aside as damaged.
    Corrupt,
}

impl Place {
    fn as_str(self) -> &'static str {
        match self {
            Place::Queued => "queued",
            Place::Dead => "dead",
            Place::Corrupt => "corrupt",
        }
    }

    fn folder(self, l: &Layout) -> &Path {
        match self {
            Place::Queued => &l.queue,
            Place::Dead => &l.dead,
            Place::Corrupt => &l.corrupt,
        }
    }
}

/// One row of `spool list`.
#[derive(Debug, Clone)]
pub struct Row {
    /// Message id.
    pub id: Id,
    /// Where it is.
    pub place: Place,
    /// Its route (`?` when the record is damaged).
    pub route: String,
    /// Acceptance time (Unix ms), when readable.
    pub accepted_ms: Option<u64>,
    /// Size on disk.
    pub bytes: u64,
    /// Attempts and last error.
    pub state: State,
}

/// Every message of the spool, queued first, then dead letters, then damaged.
pub fn rows(layout: &Layout) -> std::io::Result<Vec<Row>> {
    let mut out = Vec::new();
    for place in [Place::Queued, Place::Dead, Place::Corrupt] {
        let folder = place.folder(layout);
        if !folder.exists() {
            continue;
        }
        for (id, bytes) in Layout::list(folder)? {
            let meta = std::fs::read(Layout::msg(folder, &id))
                .ok()
                .and_then(|b| record::decode_meta(&b).ok());
            let state = Layout::read_state(folder, &id).unwrap_or_default();
            out.push(Row {
                route: meta.as_ref().map_or("?".into(), |m| m.route.clone()),
                accepted_ms: meta.as_ref().map(|m| m.accepted_ms),
                id,
                place,
                bytes,
                state,
            });
        }
    }
    Ok(out)
}

fn age(accepted_ms: Option<u64>) -> String {
    let Some(t) = accepted_ms else {
        return "?".into();
    };
    let s = super::now_ms().saturating_sub(t) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `spool list`.
pub fn list(layout: &Layout, out: &mut dyn Write) -> std::io::Result<()> {
    let rows = rows(layout)?;
    writeln!(
        out,
        "{:<21} {:<8} {:<16} {:>6} {:>8} {:>9}  LAST ERROR",
        "ID", "WHERE", "ROUTE", "AGE", "ATTEMPTS", "BYTES"
    )?;
    for r in &rows {
        writeln!(
            out,
            "{:<21} {:<8} {:<16} {:>6} {:>8} {:>9}  {}",
            r.id,
            r.place.as_str(),
            r.route,
            age(r.accepted_ms),
            r.state.attempts,
            r.bytes,
            r.state.last_error.as_deref().unwrap_or("-")
        )?;
    }
    let count = |p| rows.iter().filter(|r| r.place == p).count();
    writeln!(
        out,
        "{} queued, {} dead, {} damaged",
        count(Place::Queued),
        count(Place::Dead),
        count(Place::Corrupt)
    )
}

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Not an id.
    #[error("{0:?} is not a message id (see `hookgate spool list`)")]
    BadId(String),
    /// No such message.
    #[error("no message {0} in the spool")]
    NotFound(String),
    /// File system error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn find(layout: &Layout, id: &str) -> Result<(Id, Place), AdminError> {
    let id = Id::parse(id).ok_or_else(|| AdminError::BadId(id.to_string()))?;
    for place in [Place::Queued, Place::Dead, Place::Corrupt] {
        if Layout::msg(place.folder(layout), &id).exists() {
            return Ok((id, place));
        }
    }
    Err(AdminError::NotFound(id.to_string()))
}

/// `spool show ID [--body]`: the metadata; the body only when asked for.
pub fn show(
    layout: &Layout,
    id: &str,
    with_body: bool,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let (id, place) = find(layout, id)?;
    let folder = place.folder(layout);
    let bytes = std::fs::read(Layout::msg(folder, &id))?;
    let state = Layout::read_state(folder, &id).unwrap_or_default();
    writeln!(out, "id:          {id}")?;
    writeln!(out, "where:       {}", place.as_str())?;
    writeln!(out, "size:        {} bytes", bytes.len())?;
    match record::decode(&bytes) {
        Err(e) => {
            writeln!(out, "record:      damaged ({e})")?;
        }
        Ok((meta, range)) => {
            writeln!(out, "route:       {}", meta.route)?;
            writeln!(
                out,
                "accepted:    {} ms after the epoch ({} ago)",
                meta.accepted_ms,
                age(Some(meta.accepted_ms))
            )?;
            writeln!(out, "key:         {}", meta.key)?;
            writeln!(
                out,
                "call id:     {}",
                meta.call_id.as_deref().unwrap_or("-")
            )?;
            let names: Vec<&str> = meta.headers.iter().map(|(k, _)| k.as_str()).collect();
            writeln!(out, "headers:     {}", names.join(", "))?;
            writeln!(out, "body:        {} bytes", range.len())?;
            writeln!(out, "attempts:    {}", state.attempts)?;
            writeln!(
                out,
                "last error:  {}",
                state.last_error.as_deref().unwrap_or("-")
            )?;
            if with_body {
                writeln!(out)?;
                out.write_all(bytes.get(range).unwrap_or_default())?;
                writeln!(out)?;
            }
        }
    }
    Ok(())
}

/// Every id's message, each once (an id given twice is acted on once), or
/// the first id that is wrong.
fn find_all(layout: &Layout, ids: &[String]) -> Result<Vec<(Id, Place)>, AdminError> {
    let mut found: Vec<(Id, Place)> = Vec::new();
    for id in ids {
        let (id, place) = find(layout, id)?;
        if !found.iter().any(|(f, _)| *f == id) {
            found.push((id, place));
        }
    }
    Ok(found)
}

/// `spool retry ID...`: move dead letters back to the queue, with no attempts
/// and their age counted from now; they are delivered next, in id order.
/// Returns what it did per id.
pub fn retry(layout: &Layout, ids: &[String]) -> Result<Vec<String>, AdminError> {
    // Every id is found first: a typo among them changes nothing.
    let found = find_all(layout, ids)?;
    let mut done = Vec::new();
    for (id, place) in found {
        match place {
            Place::Queued => {
                done.push(format!(
                    "{id}: already queued; it is tried again when its backoff ends"
                ));
            }
            Place::Corrupt => {
                done.push(format!("{id}: damaged, cannot be retried (drop it)"));
            }
            Place::Dead => {
                // A fresh start: no attempts, and its age counts from now.
                let old = Layout::read_state(&layout.dead, &id).unwrap_or_default();
                let fresh = State {
                    route: old.route,
                    since_ms: Some(super::now_ms()),
                    ..State::default()
                };
                layout.write_state(&layout.queue, &id, &fresh)?;
                std::fs::rename(
                    Layout::msg(&layout.dead, &id),
                    Layout::msg(&layout.queue, &id),
                )?;
                let _ = std::fs::remove_file(Layout::state(&layout.dead, &id));
                super::store::sync_dir(&layout.queue)?;
                done.push(format!("{id}: queued again"));
            }
        }
    }
    Ok(done)
}

/// Every dead letter's id.
pub fn dead_ids(layout: &Layout) -> std::io::Result<Vec<String>> {
    Ok(Layout::list(&layout.dead)?
        .into_iter()
        .map(|(id, _)| id.to_string())
        .collect())
}

/// `spool drop ID...`: delete messages for good (queued, dead or damaged).
pub fn drop_messages(layout: &Layout, ids: &[String]) -> Result<Vec<String>, AdminError> {
    // Every id is found first: a typo among them drops nothing.
    let found = find_all(layout, ids)?;
    let mut done = Vec::new();
    for (id, place) in found {
        Layout::remove(place.folder(layout), &id)?;
        done.push(format!("{id}: dropped from {}", place.as_str()));
    }
    Ok(done)
}
