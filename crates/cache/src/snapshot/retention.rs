//! Retention: which old points are deleted after a new one is written, and only once the new
//! point reads back whole. Deleting the old points for a new one the disk damaged would leave
//! nothing to restore; and a point that cannot be deleted (gone already, or refused by the
//! file system) is reported for itself, never as a failure to write the point that was written.

use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{RESTORE_TO, RecoveryPoint, SnapshotError, io_err, list, to_delete, verify};

/// What retention did.
#[derive(Debug, Default)]
pub struct Retention {
    /// Points deleted (or found already gone: another writer's retention, an operator).
    pub removed: Vec<RecoveryPoint>,
    /// Points that could not be deleted, and why; the others were deleted all the same.
    pub failed: Vec<SnapshotError>,
}

/// Re-reads `point`, just written into `dir`, whole; then, if it reads back, deletes the
/// points [`to_delete`] chooses (by count and age, chains kept whole, the point named in
/// `restore-to` kept). A point that does not read back is the error, and every older point is
/// kept.
pub fn settle(
    dir: &Path,
    point: &RecoveryPoint,
    keep: usize,
    max_age: Option<Duration>,
    now: SystemTime,
) -> Result<Retention, SnapshotError> {
    verify(&point.path)?;
    Ok(apply_retention(dir, keep, max_age, now))
}

/// Deletes the points [`to_delete`] chooses in `dir`. What cannot be done (listing `dir`,
/// deleting a point) is in [`Retention::failed`]; it never undoes the point just written.
pub fn apply_retention(
    dir: &Path,
    keep: usize,
    max_age: Option<Duration>,
    now: SystemTime,
) -> Retention {
    let points = match list(dir) {
        Ok(points) => points,
        Err(e) => {
            return Retention {
                removed: Vec::new(),
                failed: vec![e],
            };
        }
    };
    let asked = fs::read_to_string(dir.join(RESTORE_TO)).ok();
    let gone = to_delete(&points, keep, max_age, now, asked.as_deref().map(str::trim));
    remove_points(gone)
}

/// Deletes `points`, going on past any that cannot be: one undeletable file must not keep
/// the rest from going. A point already gone counts as removed.
fn remove_points(points: Vec<RecoveryPoint>) -> Retention {
    let mut done = Retention::default();
    for p in points {
        match fs::remove_file(&p.path) {
            Ok(()) => done.removed.push(p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => done.removed.push(p),
            Err(e) => done.failed.push(io_err(&p.path)(e)),
        }
    }
    done
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::{ToWrite, write};
    use super::*;

    /// Three full points of one record each in `dir`, oldest first.
    fn three_points(dir: &Path) -> Vec<RecoveryPoint> {
        let records = [ToWrite::Remove {
            service: "cdn",
            key: "http://h/1",
        }];
        (0..3)
            .map(|_| write(dir, None, &records, 0, None).unwrap())
            .collect()
    }

    #[test]
    fn a_point_that_does_not_read_back_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let points = three_points(dir.path());
        let newest = &points[2];
        // The disk gave back something else: the record's last byte. The header is whole, so
        // the point is listed, and only a read of the whole file finds the damage.
        let mut bytes = fs::read(&newest.path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&newest.path, &bytes).unwrap();
        let settled = settle(dir.path(), newest, 1, None, SystemTime::now());
        assert!(
            matches!(settled, Err(SnapshotError::Corrupt { .. })),
            "{settled:?}"
        );
        assert!(points.iter().all(|p| p.path.exists()), "every point kept");
        assert_eq!(
            list(dir.path()).unwrap().len(),
            3,
            "the damaged point is listed"
        );
        // Read back whole, the same point lets retention go on.
        bytes[last] ^= 0xff;
        fs::write(&newest.path, &bytes).unwrap();
        let settled = settle(dir.path(), newest, 1, None, SystemTime::now()).unwrap();
        assert_eq!(settled.removed, vec![points[1].clone(), points[0].clone()]);
        assert!(settled.failed.is_empty());
        assert_eq!(list(dir.path()).unwrap(), vec![newest.clone()]);
    }

    #[test]
    fn a_directory_that_cannot_be_listed_is_retention_s_failure_not_the_point_s() {
        let dir = tempfile::tempdir().unwrap();
        let points = three_points(dir.path());
        // The point reads back; what retention lists is not a directory (a file stands at
        // its name), so listing it fails.
        let not_a_dir = dir.path().join("not-a-dir");
        fs::write(&not_a_dir, b"x").unwrap();
        let settled = settle(&not_a_dir, &points[2], 1, None, SystemTime::now()).unwrap();
        assert!(settled.removed.is_empty());
        assert_eq!(settled.failed.len(), 1, "{:?}", settled.failed);
        assert!(points.iter().all(|p| p.path.exists()));
    }

    #[test]
    fn retention_goes_on_past_points_it_cannot_delete() {
        let dir = tempfile::tempdir().unwrap();
        let points = three_points(dir.path());
        // One point already gone (an operator, another writer's retention), one that the file
        // system refuses to unlink (a directory now stands at its name).
        fs::remove_file(&points[0].path).unwrap();
        fs::remove_file(&points[1].path).unwrap();
        fs::create_dir(&points[1].path).unwrap();
        fs::write(points[1].path.join("inside"), b"x").unwrap();
        let extra = write(dir.path(), None, &[], 0, None).unwrap();
        let done = remove_points(vec![
            points[0].clone(),
            points[1].clone(),
            points[2].clone(),
        ]);
        assert_eq!(done.removed, vec![points[0].clone(), points[2].clone()]);
        assert_eq!(done.failed.len(), 1, "{:?}", done.failed);
        assert!(
            done.failed[0]
                .to_string()
                .contains(&*points[1].path.to_string_lossy()),
            "the error names the file: {}",
            done.failed[0]
        );
        assert!(!points[2].path.exists(), "deleted after the failure");
        assert!(extra.path.exists());
    }
}
