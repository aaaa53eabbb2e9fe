use super::*;
use futures::StreamExt;

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
