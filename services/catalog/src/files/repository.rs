//! Reading a snapshot's paths from its repository.

use arca_repo::repository::TreeLoader;
use arca_repo::{NodeKind, Repository};

use crate::files::{FileEntry, FileKind};

/// Every path of the repository snapshot `repo_snapshot_id` (its id in the repository, hex; a
/// unique prefix works too), folders included, depth-first in tree order. Blocking: it reads
/// the repository's index and the snapshot's tree packs, so call it on a blocking thread.
pub fn entries_from_repository(repo: &Repository, repo_snapshot_id: &str) -> arca_repo::Result<Vec<FileEntry>> {
    let (_, snapshot) = repo.find_snapshot(repo_snapshot_id)?;
    let index = repo.load_index()?;
    let loader = TreeLoader::new(repo, &index);
    let summary = &snapshot.summary;
    let expected = summary.files_new + summary.files_changed + summary.files_unmodified + summary.dirs;
    let mut entries = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    arca_repo::restore::walk_tree(&loader, &snapshot.tree, b"", &mut |path, node| {
        entries.push(FileEntry {
            path: String::from_utf8_lossy(path).into_owned(),
            kind: match node.kind {
                NodeKind::File => FileKind::File,
                NodeKind::Dir => FileKind::Dir,
                NodeKind::Symlink => FileKind::Symlink,
            },
            size: node.size,
            mtime_ns: node.mtime_ns,
        });
        Ok(true)
    })?;
    Ok(entries)
}
