//! Integration-test harness for Tern.
//!
//! Tests describe a server by its policy text; the harness writes the
//! policy (and any data files) into a fresh temporary folder, starts the
//! real `tern serve` binary on it, waits for `initialization complete`,
//! learns the bound ports from the `<proto> listener on <addr>` lines, and
//! offers small helpers to speak SMTP and HTTP to it. The process is always
//! stopped when the handle is dropped, also when a test panics.
//!
//! In policy text, `{dir}` is replaced by the temporary folder, so a test
//! can put spools and logs there: `path = '{dir}/data'`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The `tern` binary: `TERN_BIN`, or `target/<profile>/tern` next to the
/// running test executable (which lives in `target/<profile>/deps`).
pub fn tern_binary() -> PathBuf {
    if let Ok(path) = std::env::var("TERN_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile> folder");
    profile_dir.join("tern")
}

/// A minimal policy with both spools, a log directory and the given extra
/// `init` lines; listeners on ephemeral ports are added by the caller.
pub fn minimal_init(extra_init: &str) -> String {
    format!(
        r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{dir}}/spool/data', min_free_space = '1%' }}
  kumo.define_spool {{ name = 'meta', path = '{{dir}}/spool/meta', min_free_space = '1%' }}
{extra_init}
end)
"#
    )
}

#[derive(Default)]
struct Output {
    lines: Vec<String>,
    closed: bool,
}

pub struct Builder {
    policy: String,
    files: Vec<(String, Vec<u8>)>,
    args: Vec<String>,
    env: HashMap<String, String>,
    binary: PathBuf,
    dir: Option<tempfile::TempDir>,
    wait_for_ready: bool,
}

impl Builder {
    pub fn new(policy: impl Into<String>) -> Self {
        Self {
            policy: policy.into(),
            files: Vec::new(),
            args: Vec::new(),
            env: HashMap::new(),
            binary: tern_binary(),
            dir: None,
            wait_for_ready: true,
        }
    }

    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = path.into();
        self
    }

    /// Write a data file (path relative to the temporary folder; `{dir}` is
    /// substituted in its contents too).
    pub fn file(mut self, name: &str, contents: impl AsRef<[u8]>) -> Self {
        self.files
            .push((name.to_string(), contents.as_ref().to_vec()));
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.to_string(), value.to_string());
        self
    }

    /// Reuse a folder (e.g. to restart on the same spool).
    pub fn dir(mut self, dir: tempfile::TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Do not wait for `initialization complete` (for startup failures).
    pub fn no_wait(mut self) -> Self {
        self.wait_for_ready = false;
        self
    }

    pub fn start(self) -> anyhow::Result<TernServer> {
        let dir = match self.dir {
            Some(dir) => dir,
            None => tempfile::tempdir()?,
        };
        let root = dir.path().display().to_string();
        let policy_path = dir.path().join("init.lua");
        std::fs::write(&policy_path, self.policy.replace("{dir}", &root))?;
        for (name, contents) in &self.files {
            let path = dir.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let contents = match std::str::from_utf8(contents) {
                Ok(text) => text.replace("{dir}", &root).into_bytes(),
                Err(_) => contents.clone(),
            };
            std::fs::write(path, contents)?;
        }
        let mut command = Command::new(&self.binary);
        command
            .arg("serve")
            .arg("--policy")
            .arg(&policy_path)
            .arg("--user")
            .arg(current_user_name())
            .args(&self.args)
            .env("KUMO_NODE_ID_PATH", dir.path().join(".nodeid"))
            .env("KUMOD_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            command.env(k, v);
        }
        let mut child = command.spawn().map_err(|e| {
            anyhow::anyhow!(
                "cannot start {}: {e} (build it with `cargo build -p tern`)",
                self.binary.display()
            )
        })?;
        let output = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if std::env::var_os("TERN_TEST_ECHO").is_some() {
                        eprintln!("[tern] {line}");
                    }
                    let (lock, cvar) = &*output;
                    lock.lock().unwrap().lines.push(line);
                    cvar.notify_all();
                }
                let (lock, cvar) = &*output;
                lock.lock().unwrap().closed = true;
                cvar.notify_all();
            });
        }
        let mut server = TernServer {
            child: Some(child),
            dir: Some(dir),
            output,
            listeners: HashMap::new(),
        };
        if self.wait_for_ready {
            server.wait_for_line("initialization complete", Duration::from_secs(60))?;
        }
        server.listeners = server.parse_listeners();
        Ok(server)
    }
}

/// The user to pass as `--user` (required when tests run as root).
fn current_user_name() -> String {
    let uid = unsafe { libc::geteuid() };
    let entry = unsafe { libc::getpwuid(uid) };
    if entry.is_null() {
        return "root".to_string();
    }
    let name = unsafe { std::ffi::CStr::from_ptr((*entry).pw_name) };
    name.to_string_lossy().into_owned()
}

/// A running `tern serve` process.
pub struct TernServer {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    output: Arc<(Mutex<Output>, Condvar)>,
    listeners: HashMap<String, Vec<SocketAddr>>,
}

impl TernServer {
    pub fn start(policy: impl Into<String>) -> anyhow::Result<Self> {
        Builder::new(policy).start()
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    /// Everything the process printed so far (stderr and stdout).
    pub fn output(&self) -> String {
        self.output.0.lock().unwrap().lines.join("\n")
    }

    /// Wait until a printed line contains `needle`; fails if the process
    /// exits first or the timeout passes.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.output;
        let mut out = lock.lock().unwrap();
        loop {
            if let Some(line) = out.lines.iter().find(|l| l.contains(needle)) {
                return Ok(line.clone());
            }
            if out.closed {
                anyhow::bail!(
                    "tern exited before printing '{needle}'; output:\n{}",
                    out.lines.join("\n")
                );
            }
            let now = Instant::now();
            if now >= deadline {
                anyhow::bail!(
                    "timed out waiting for '{needle}'; output:\n{}",
                    out.lines.join("\n")
                );
            }
            out = cvar.wait_timeout(out, deadline - now).unwrap().0;
        }
    }

    fn parse_listeners(&self) -> HashMap<String, Vec<SocketAddr>> {
        let mut map: HashMap<String, Vec<SocketAddr>> = HashMap::new();
        for line in self.output.0.lock().unwrap().lines.iter() {
            let Some(idx) = line.find(" listener on ") else {
                continue;
            };
            let proto = line[..idx].rsplit(' ').next().unwrap_or("").to_string();
            let addr = line[idx + " listener on ".len()..]
                .split_whitespace()
                .next()
                .unwrap_or("");
            if let Ok(addr) = addr.parse() {
                map.entry(proto).or_default().push(addr);
            }
        }
        map
    }

    /// The first listener of `proto` (`smtp`, `http`).
    pub fn listener(&self, proto: &str) -> SocketAddr {
        self.listeners
            .get(proto)
            .and_then(|v| v.first().copied())
            .unwrap_or_else(|| {
                panic!(
                    "no {proto} listener line was printed; output:\n{}",
                    self.output()
                )
            })
    }

    pub fn listeners(&self, proto: &str) -> Vec<SocketAddr> {
        self.listeners.get(proto).cloned().unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Wait for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("process handle");
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                anyhow::bail!("tern did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
        }
    }

    /// `kill -9` the process and keep the folder, to restart on it.
    pub fn kill9(mut self) -> tempfile::TempDir {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.dir.take().unwrap()
    }

    /// Graceful stop (SIGTERM, then SIGKILL after 20 s); keeps the folder.
    pub fn stop(mut self) -> tempfile::TempDir {
        self.terminate();
        self.dir.take().unwrap()
    }

    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => return,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return;
                    }
                }
            }
        }
    }

    /// A blocking HTTP/1.1 request to the first http listener: (status, body).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        http_request(self.listener("http"), method, path, &[], body)
    }

    pub fn smtp(&self) -> anyhow::Result<SmtpClient> {
        SmtpClient::connect(self.listener("smtp"))
    }
}

impl Drop for TernServer {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// A small blocking HTTP/1.1 client (`Connection: close`).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("malformed HTTP response: {text}"))?;
    let (head, payload) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let payload = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(payload)
    } else {
        payload.to_string()
    };
    Ok((status, payload))
}

fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        text = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// A line-oriented SMTP client for tests that need exact control over
/// what is sent (for ordinary sessions prefer Python's smtplib or swaks).
pub struct SmtpClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl SmtpClient {
    pub fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Read one (possibly multi-line) reply: (code, full text).
    pub fn read_reply(&mut self) -> anyhow::Result<(u16, String)> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                anyhow::bail!("connection closed; read so far: {text:?}");
            }
            text.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                return Ok((code, text));
            }
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.writer.write_all(bytes)?;
        Ok(())
    }

    /// Send one command line (CRLF added) and read the reply.
    pub fn command(&mut self, line: &str) -> anyhow::Result<(u16, String)> {
        self.send_raw(format!("{line}\r\n").as_bytes())?;
        self.read_reply()
    }

    /// One transaction after the greeting and EHLO: MAIL, RCPT, DATA, the
    /// body (which must end with CRLF and be dot-stuffed already), and the
    /// final dot. Returns the reply to the final dot.
    pub fn send_message(
        &mut self,
        from: &str,
        to: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, String)> {
        for (line, want) in [
            (format!("MAIL FROM:<{from}>"), 250),
            (format!("RCPT TO:<{to}>"), 250),
            ("DATA".to_string(), 354),
        ] {
            let (code, text) = self.command(&line)?;
            if code != want {
                return Ok((code, text));
            }
        }
        self.send_raw(body)?;
        self.command(".")
    }

    /// True when the server has closed the connection.
    pub fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.reader.read(&mut buf), Ok(0))
    }
}
