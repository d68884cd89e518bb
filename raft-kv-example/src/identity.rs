//! Whose a data directory is: the cluster and node it was created for, and whether that
//! node was removed from the cluster. A node refuses to start on another cluster's or
//! another node's data, or on the data of a removed node, with a message that says why.

use std::path::{Path, PathBuf};

use raft_core::NodeId;

use crate::runner::RunError;

/// The file naming the cluster and node a data directory belongs to.
const IDENTITY_FILE: &str = "IDENTITY";
/// Written when the node learns it was removed from the cluster.
const REMOVED_FILE: &str = "REMOVED";

fn io(path: &Path, doing: &str) -> impl FnOnce(std::io::Error) -> RunError {
    let context = format!("cannot {doing} {}", path.display());
    move |source| RunError::Io { context, source }
}

/// The version of the state machine's log and snapshot encoding. Bumped when a command's
/// encoding changes, so a node never misreads a log written by an older build.
const KV_FORMAT: u32 = 2;

fn identity(cluster_id: u64, id: NodeId) -> String {
    format!(
        "cluster_id={cluster_id}\nnode_id={}\nkv_format={KV_FORMAT}\n",
        id.0
    )
}

/// What the first format wrote: no format line.
fn identity_v1(cluster_id: u64, id: NodeId) -> String {
    format!("cluster_id={cluster_id}\nnode_id={}\n", id.0)
}

/// Checks that `dir` belongs to this cluster and node and that the node was not removed;
/// a directory used for the first time is marked as this node's.
pub fn check(dir: &Path, cluster_id: u64, id: NodeId) -> Result<(), RunError> {
    let removed = dir.join(REMOVED_FILE);
    if removed.exists() {
        let why = std::fs::read_to_string(&removed).unwrap_or_default();
        return Err(RunError::Usage(format!(
            "{} belongs to node {} that was removed from the cluster ({}); it cannot rejoin with this data: give the machine a new id and an empty --data-dir, start it with --join and add it (raft-kv admin add-learner)",
            dir.display(),
            id.0,
            why.trim()
        )));
    }
    let path = dir.join(IDENTITY_FILE);
    let want = identity(cluster_id, id);
    match std::fs::read_to_string(&path) {
        Ok(found) if found == want => Ok(()),
        Ok(found) if found == identity_v1(cluster_id, id) => Err(RunError::Usage(format!(
            "{} was written by an older raft-kv whose log format (1) this version (format {KV_FORMAT}) cannot read: start this node on an empty --data-dir",
            dir.display()
        ))),
        Ok(found) => Err(RunError::Usage(format!(
            "{} holds the data of another cluster or node ({}), not of cluster {cluster_id} node {}: use that node's id and --cluster-id, or another --data-dir",
            dir.display(),
            found.trim().replace('\n', ", "),
            id.0
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&path, want).map_err(io(&path, "write"))
        }
        Err(e) => Err(io(&path, "read")(e)),
    }
}

/// Marks `dir` as the data of a removed node, so it is never started again.
pub fn mark_removed(dir: &Path, what: &str) -> Result<PathBuf, RunError> {
    let path = dir.join(REMOVED_FILE);
    std::fs::write(&path, format!("{what}\n")).map_err(io(&path, "write"))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_serves_one_cluster_and_node_and_never_a_removed_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        check(dir.path(), 7, NodeId(2)).expect("a new directory is taken");
        check(dir.path(), 7, NodeId(2)).expect("and accepted again");
        let other = check(dir.path(), 8, NodeId(2)).unwrap_err().to_string();
        assert!(other.contains("another cluster or node"), "{other}");
        assert!(check(dir.path(), 7, NodeId(3)).is_err());
        let old = tempfile::tempdir().expect("tempdir");
        std::fs::write(old.path().join(IDENTITY_FILE), identity_v1(7, NodeId(2))).unwrap();
        let refused = check(old.path(), 7, NodeId(2)).unwrap_err().to_string();
        assert!(refused.contains("older raft-kv"), "{refused}");
        mark_removed(dir.path(), "removed at term 3").expect("mark");
        let removed = check(dir.path(), 7, NodeId(2)).unwrap_err().to_string();
        assert!(
            removed.contains("was removed") && removed.contains("term 3"),
            "{removed}"
        );
    }
}
