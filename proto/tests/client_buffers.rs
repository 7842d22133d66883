//! Checks that the blocking protocol client wipes secrets from the heap.
//!
//! A global allocator scans every block freed while a check is armed and
//! records whether it still contains the secret. The fake agent builds its
//! replies before the check is armed and reads into a stack array, so only
//! the client's own buffers are scanned.

#![allow(clippy::unwrap_used, clippy::panic)]
// A global allocator needs `unsafe`. This one forwards to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use freeauth_proto::frame::encode;
use freeauth_proto::{
    Client, HelloReply, Origin, Request, Response, ResponseFrame, SecretString, VerifyResult, PROTOCOL_VERSION,
};

/// Allocator that reports freed blocks containing the armed secret.
struct ScanningAllocator;

static ARMED: AtomicBool = AtomicBool::new(false);
static SECRET: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static SECRET_LEN: AtomicUsize = AtomicUsize::new(0);
static LEAKS: AtomicUsize = AtomicUsize::new(0);

/// Only one check may be armed at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

unsafe impl GlobalAlloc for ScanningAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ARMED.load(Ordering::SeqCst) {
            let secret_ptr = SECRET.load(Ordering::SeqCst);
            let secret_len = SECRET_LEN.load(Ordering::SeqCst);
            if !secret_ptr.is_null() && secret_len > 0 && layout.size() >= secret_len {
                let secret = std::slice::from_raw_parts(secret_ptr, secret_len);
                let block = std::slice::from_raw_parts(ptr, layout.size());
                if block.windows(secret_len).any(|window| window == secret) {
                    LEAKS.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: ScanningAllocator = ScanningAllocator;

/// Arms the scan for `secret`, which must outlive the check.
fn arm(secret: &'static [u8]) {
    LEAKS.store(0, Ordering::SeqCst);
    SECRET_LEN.store(secret.len(), Ordering::SeqCst);
    SECRET.store(secret.as_ptr().cast_mut(), Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
}

/// Disarms the scan and returns the number of freed blocks that contained it.
fn disarm() -> usize {
    ARMED.store(false, Ordering::SeqCst);
    LEAKS.load(Ordering::SeqCst)
}

/// Reads one frame into a stack array, so the fake agent frees nothing
/// that contains what the client sent.
fn skip_frame(stream: &mut impl Read) {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).unwrap();
    let length = usize::try_from(u32::from_be_bytes(header)).unwrap();
    let mut body = [0u8; 4096];
    assert!(
        length <= body.len(),
        "frame of {length} bytes too long for the fake agent"
    );
    stream.read_exact(&mut body[..length]).unwrap();
}

/// The fake agent's thread, which returns the frames it sent.
type FakeAgent = std::thread::JoinHandle<(Vec<u8>, Vec<u8>)>;

/// Starts a fake agent that welcomes one client and sends `reply` to its
/// first request. Returns the socket path and the thread, which hands the
/// reply bytes back so that they are freed only after the check.
fn fake_agent(dir: &std::path::Path, reply: Response) -> (std::path::PathBuf, FakeAgent) {
    let path = dir.join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let welcome = encode(&HelloReply::Welcome {
        version: PROTOCOL_VERSION,
        agent: "fake".into(),
    })
    .unwrap();
    let response = encode(&ResponseFrame { id: 1, response: reply }).unwrap();
    let thread = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        skip_frame(&mut stream);
        stream.write_all(&welcome).unwrap();
        skip_frame(&mut stream);
        stream.write_all(&response).unwrap();
        // Waits for the client to hang up before anything is freed here.
        let mut rest = [0u8; 64];
        while stream.read(&mut rest).is_ok_and(|read| read > 0) {}
        (welcome, response)
    });
    (path, thread)
}

#[test]
fn client_wipes_received_backup_codes() {
    const CODE: &str = "48151623";
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let enrolled = Response::Enrolled {
        user: "alice".into(),
        token: 1,
        backup_codes: vec![SecretString::from(CODE)],
    };
    let (path, agent) = fake_agent(dir.path(), enrolled);

    arm(CODE.as_bytes());
    let mut client = Client::connect(&path, "test", Duration::from_secs(5)).unwrap();
    let response = client.call(Request::Lookup { user: "alice".into() }).unwrap();
    assert!(matches!(response, Response::Enrolled { .. }), "unexpected response");
    drop(response);
    drop(client);
    let leaks = disarm();

    let kept_until_now = agent.join().unwrap();
    drop(kept_until_now);
    assert_eq!(leaks, 0, "{leaks} freed client buffers still held the backup code");
}

#[test]
fn client_wipes_sent_code() {
    const CODE: &str = "90817263";
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let verdict = Response::Verdict {
        result: VerifyResult::Rejected,
        reason: None,
    };
    let (path, agent) = fake_agent(dir.path(), verdict);
    let mut client = Client::connect(&path, "test", Duration::from_secs(5)).unwrap();
    let request = Request::Verify {
        user: "alice".into(),
        code: SecretString::from(CODE),
        // A long host name makes the frame grow after the code is written.
        origin: Origin::Pam {
            service: "login".into(),
            rhost: Some("h".repeat(2000)),
            tty: None,
            ruser: None,
        },
    };

    arm(CODE.as_bytes());
    let response = client.call(request).unwrap();
    drop(response);
    drop(client);
    let leaks = disarm();

    let kept_until_now = agent.join().unwrap();
    drop(kept_until_now);
    assert_eq!(leaks, 0, "{leaks} freed client buffers still held the code");
}
