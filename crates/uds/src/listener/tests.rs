use super::*;
use futures::StreamExt;
use std::os::unix::fs::{MetadataExt, symlink};

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").mode() & 0o777
}

#[tokio::test]
async fn bind_creates_parent_and_sets_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested/agent.sock");
    let _listener = bind(&path, 0o777).expect("bind");
    assert!(
        fs::symlink_metadata(&path)
            .expect("metadata")
            .file_type()
            .is_socket()
    );
    assert_eq!(mode_of(&path), 0o777);
}

#[tokio::test]
async fn bind_replaces_stale_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.sock");
    drop(bind(&path, 0o700).expect("first bind"));
    assert!(path.exists(), "dropping a listener leaves the file behind");
    let _listener = bind(&path, 0o755).expect("second bind");
    assert_eq!(mode_of(&path), 0o755);
}

#[tokio::test]
async fn bind_rejects_socket_in_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.sock");
    let _listener = bind(&path, 0o700).expect("first bind");
    let err = bind(&path, 0o700).expect_err("must reject");
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
}

#[tokio::test]
async fn bind_keeps_regular_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.sock");
    fs::write(&path, b"data").expect("write");
    let err = bind(&path, 0o700).expect_err("must reject");
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    assert!(err.to_string().contains("agent.sock"), "{err}");
    assert_eq!(fs::read(&path).expect("read"), b"data");
}

#[tokio::test]
async fn bind_private_creates_0700_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("admin/api.sock");
    let _listener = bind_private(&path).expect("bind");
    assert_eq!(mode_of(&dir.path().join("admin")), 0o700);
    assert_eq!(mode_of(&path), 0o600);
}

#[tokio::test]
async fn bind_private_rejects_open_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = dir.path().join("admin");
    fs::create_dir(&admin).expect("mkdir");
    fs::set_permissions(&admin, Permissions::from_mode(0o755)).expect("chmod");
    let err = bind_private(&admin.join("api.sock")).expect_err("must reject");
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    assert!(err.to_string().contains("open to other users"), "{err}");
    assert_eq!(
        mode_of(&admin),
        0o755,
        "an existing directory must keep its mode"
    );
}

#[tokio::test]
async fn bind_private_rejects_sticky_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = dir.path().join("shared");
    fs::create_dir(&shared).expect("mkdir");
    fs::set_permissions(&shared, Permissions::from_mode(0o1777)).expect("chmod");
    let err = bind_private(&shared.join("api.sock")).expect_err("must reject");
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    assert_eq!(
        fs::metadata(&shared).expect("metadata").mode() & 0o7777,
        0o1777
    );
}

/// uid of `nobody` on Linux, standing for another local user.
const OTHER_UID: u32 = 65534;

/// Creates `dir` with `mode` and owner `uid`; the ownership tests need root.
fn make_dir(dir: &Path, mode: u32, uid: u32) {
    fs::create_dir(dir).expect("mkdir");
    fs::set_permissions(dir, Permissions::from_mode(mode)).expect("chmod");
    std::os::unix::fs::chown(dir, Some(uid), None).expect("chown");
}

/// Returns a temp dir when running as root, which the ownership tests need to chown.
fn root_tempdir() -> Option<tempfile::TempDir> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to create directories owned by another user");
        return None;
    }
    Some(tempfile::tempdir().expect("tempdir"))
}

fn assert_rejects_dir(err: &io::Error, dir: &Path, owner: u32, mode: u32) {
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    let message = err.to_string();
    assert!(message.contains(&dir.display().to_string()), "{message}");
    assert!(message.contains(&format!("owner uid {owner}")), "{message}");
    assert!(message.contains(&format!("mode {mode:o}")), "{message}");
}

#[tokio::test]
async fn bind_rejects_foreign_owned_ancestor() {
    let Some(dir) = root_tempdir() else { return };
    let foreign = dir.path().join("twid-agent");
    make_dir(&foreign, 0o755, OTHER_UID);
    let path = foreign.join("sub/agent.sock");
    let err = bind(&path, 0o777).expect_err("must reject");
    assert_rejects_dir(&err, &foreign, OTHER_UID, 0o755);
    assert!(!foreign.join("sub").exists(), "nothing is created in it");
}

#[tokio::test]
async fn bind_rejects_foreign_owned_parent() {
    let Some(dir) = root_tempdir() else { return };
    let foreign = dir.path().join("twid-agent");
    make_dir(&foreign, 0o755, OTHER_UID);
    let err = bind(&foreign.join("agent.sock"), 0o777).expect_err("must reject");
    assert_rejects_dir(&err, &foreign, OTHER_UID, 0o755);
}

#[tokio::test]
async fn bind_private_rejects_foreign_owned_ancestor() {
    let Some(dir) = root_tempdir() else { return };
    // The attack: another user creates twid-server first, so it can rename the private
    // directory inside it even though that directory is root's and 0700.
    let foreign = dir.path().join("twid-server");
    make_dir(&foreign, 0o755, OTHER_UID);
    make_dir(&foreign.join("private"), 0o700, 0);
    let err = bind_private(&foreign.join("private/api.sock")).expect_err("must reject");
    assert_rejects_dir(&err, &foreign, OTHER_UID, 0o755);
}

#[tokio::test]
async fn bind_rejects_group_writable_ancestor() {
    let Some(dir) = root_tempdir() else { return };
    let shared = dir.path().join("shared");
    make_dir(&shared, 0o775, 0);
    let err = bind(&shared.join("twid/agent.sock"), 0o777).expect_err("must reject");
    assert_rejects_dir(&err, &shared, 0, 0o775);
    let err = bind_private(&shared.join("private/api.sock")).expect_err("must reject");
    assert_rejects_dir(&err, &shared, 0, 0o775);
}

#[tokio::test]
async fn bind_accepts_sticky_world_writable_ancestor() {
    let Some(dir) = root_tempdir() else { return };
    let tmp = dir.path().join("tmp");
    make_dir(&tmp, 0o1777, 0);
    let _listener = bind(&tmp.join("twid/agent.sock"), 0o777).expect("bind");
    assert_eq!(mode_of(&tmp.join("twid")), 0o755);
    let _private = bind_private(&tmp.join("private/api.sock")).expect("bind_private");
    assert_eq!(mode_of(&tmp.join("private")), 0o700);
}

#[tokio::test]
async fn bind_rejects_symlink_into_foreign_dir() {
    let Some(dir) = root_tempdir() else { return };
    // The link and its target are root's; the target's parent is not.
    let foreign = dir.path().join("foreign");
    make_dir(&foreign, 0o755, OTHER_UID);
    make_dir(&foreign.join("real"), 0o755, 0);
    let link = dir.path().join("link");
    symlink(foreign.join("real"), &link).expect("symlink");
    let err = bind(&link.join("agent.sock"), 0o777).expect_err("must reject");
    assert_rejects_dir(&err, &foreign, OTHER_UID, 0o755);
    let err = bind_private(&link.join("api.sock")).expect_err("must reject");
    assert_rejects_dir(&err, &foreign, OTHER_UID, 0o755);
}

#[tokio::test]
async fn bind_accepts_symlink_to_safe_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = dir.path().join("real");
    fs::create_dir(&real).expect("mkdir");
    let link = dir.path().join("link");
    symlink(&real, &link).expect("symlink");
    let _listener = bind(&link.join("agent.sock"), 0o777).expect("bind");
    assert!(real.join("agent.sock").exists());
}

#[tokio::test]
async fn bind_creates_missing_dirs_with_fixed_modes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _shared = bind(&dir.path().join("a/b/agent.sock"), 0o777).expect("bind");
    assert_eq!(mode_of(&dir.path().join("a")), 0o755);
    assert_eq!(mode_of(&dir.path().join("a/b")), 0o755);
    let _private = bind_private(&dir.path().join("c/d/api.sock")).expect("bind_private");
    assert_eq!(mode_of(&dir.path().join("c")), 0o700);
    assert_eq!(mode_of(&dir.path().join("c/d")), 0o700);
}

#[tokio::test]
async fn incoming_reports_peer_credentials() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.sock");
    let mut connections = Box::pin(incoming(bind(&path, 0o700).expect("bind")));
    let _client = UnixStream::connect(&path).await.expect("connect");

    let connection = connections
        .next()
        .await
        .expect("stream ended")
        .expect("accept");
    let info = connection.connect_info();
    assert_eq!(info.peer.uid, nix::unistd::geteuid().as_raw());
    assert_eq!(info.peer.gid, nix::unistd::getegid().as_raw());
    let pid = i32::try_from(std::process::id()).expect("pid fits in i32");
    assert_eq!(info.peer.pid, Some(pid));
}

#[test]
fn classifies_accept_errors() {
    let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
    assert!(is_per_connection_error(&aborted));
    let no_files = io::Error::from_raw_os_error(libc::EMFILE);
    assert!(is_per_connection_error(&no_files));
    assert!(is_resource_exhaustion(&no_files));
    let bad_fd = io::Error::from_raw_os_error(libc::EBADF);
    assert!(!is_per_connection_error(&bad_fd));
}

#[tokio::test]
async fn incoming_pauses_at_connection_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.sock");
    let mut connections = Box::pin(incoming_with_limit(bind(&path, 0o700).expect("bind"), 2));
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(UnixStream::connect(&path).await.expect("connect"));
    }
    let first = connections
        .next()
        .await
        .expect("stream ended")
        .expect("accept");
    let second = connections
        .next()
        .await
        .expect("stream ended")
        .expect("accept");

    let blocked = tokio::time::timeout(Duration::from_millis(300), connections.next()).await;
    assert!(
        blocked.is_err(),
        "a third connection must wait for a free slot"
    );

    drop(first);
    let third = tokio::time::timeout(Duration::from_secs(5), connections.next())
        .await
        .expect("accept must resume after a connection is dropped")
        .expect("stream ended");
    assert!(third.is_ok());
    drop(second);
}

#[test]
fn warning_limiter_allows_one_per_interval() {
    let start = Instant::now();
    let mut limiter = WarningLimiter::new(Duration::from_secs(1));
    assert_eq!(limiter.check(start), Some(0));
    assert_eq!(limiter.check(start + Duration::from_millis(10)), None);
    assert_eq!(limiter.check(start + Duration::from_millis(999)), None);
    assert_eq!(limiter.check(start + Duration::from_secs(1)), Some(2));
    assert_eq!(limiter.check(start + Duration::from_millis(1500)), None);
    assert_eq!(limiter.check(start + Duration::from_secs(3)), Some(1));
}
