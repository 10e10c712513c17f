//! A private etcd server for tests: Debian's `etcd` binary (package `etcd-server`, installed by
//! `.ci/run`) on free loopback ports with a temporary data directory. Not the package's systemd
//! service. Killed and its directory removed on drop. Can be killed with SIGKILL, frozen with
//! SIGSTOP and restarted on the same ports and data, to test how clients survive that.
//! [`EtcdServer::start_tls`] serves https with client-certificate authentication, under a test
//! PKI made here with rcgen (CA, server certificate for 127.0.0.1, client certificate).

use aware_agent::discovery::EtcdTls;
use etcd_client::Client;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh or restarted etcd may take to answer `status()`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug)]
pub struct EtcdServer {
    child: Option<Child>,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// With TLS: the client side's files (CA, client certificate and key).
    tls: Option<EtcdTls>,
    /// With TLS: the server's certificate and key.
    server_files: Option<(PathBuf, PathBuf)>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl EtcdServer {
    /// Starts etcd and waits until it answers.
    pub async fn start() -> EtcdServer {
        Self::start_with(false).await
    }

    /// Starts etcd serving https that requires a client certificate of the test CA.
    pub async fn start_tls() -> EtcdServer {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> EtcdServer {
        let dir =
            std::env::temp_dir().join(format!("aware-etcd-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("etcd temp dir");
        let (tls, server_files) = if tls {
            let (client, server) = make_pki(&dir.join("pki"));
            (Some(client), Some(server))
        } else {
            (None, None)
        };
        let mut s = EtcdServer {
            child: None,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            tls,
            server_files,
        };
        s.spawn().await;
        s
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// With TLS: the files a client needs (CA, client certificate and key).
    pub fn client_tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    fn connect_options(&self) -> etcd_client::ConnectOptions {
        let opts = etcd_client::ConnectOptions::new();
        match &self.tls {
            Some(t) => opts.with_tls(t.load().expect("test TLS files")),
            None => opts,
        }
    }

    async fn spawn(&mut self) {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .expect("etcd log file");
        let mut cmd = Command::new("etcd");
        if let Some((cert, key)) = &self.server_files {
            let ca = &self.tls.as_ref().expect("tls with server files").ca;
            cmd.arg(format!("--cert-file={}", cert.display()))
                .arg(format!("--key-file={}", key.display()))
                .arg(format!("--trusted-ca-file={}", ca.display()))
                .arg("--client-cert-auth");
        }
        let child = cmd
            .arg("--name=t")
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=t={peer}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `etcd` ({e}); install Debian's etcd-server (.ci/run does)")
            });
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Ok(mut c)) = tokio::time::timeout(
                Duration::from_secs(1),
                Client::connect([self.endpoint()], Some(self.connect_options())),
            )
            .await
                && let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), c.status()).await
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd not ready within {READY_TIMEOUT:?}; log: {}",
                std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A plain client with every call bounded, for the test's own checks.
    pub async fn client(&self) -> Client {
        let opts = self.connect_options().with_timeout(Duration::from_secs(3));
        Client::connect([self.endpoint()], Some(opts))
            .await
            .expect("test client")
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "kill {sig} etcd");
        }
    }

    /// SIGKILL: etcd vanishes mid-run.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: etcd hangs (connections stay open, nothing answers).
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`EtcdServer::freeze`].
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// Starts etcd again on the same ports and data (after [`EtcdServer::kill9`]).
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A test PKI in `dir`: a CA, a server certificate for 127.0.0.1 and localhost, and a client
/// certificate. Returns the client side's files and the server's (certificate, key).
fn make_pki(dir: &std::path::Path) -> (EtcdTls, (PathBuf, PathBuf)) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    std::fs::create_dir_all(dir).expect("pki dir");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("pki file");
        path
    };
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "etcd test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    let ca_path = write("ca.pem", &ca_cert.pem());
    let issuer = Issuer::from_ca_cert_der(ca_cert.der(), ca_key).expect("issuer");
    let leaf = |cn: &str, eku: ExtendedKeyUsagePurpose, stem: &str| {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        p.subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![eku];
        let cert = p.signed_by(&key, &issuer).expect("leaf");
        (
            write(&format!("{stem}.pem"), &cert.pem()),
            write(&format!("{stem}-key.pem"), &key.serialize_pem()),
        )
    };
    let server = leaf("etcd", ExtendedKeyUsagePurpose::ServerAuth, "server");
    let (cert, key) = leaf("aware-node", ExtendedKeyUsagePurpose::ClientAuth, "client");
    (
        EtcdTls {
            ca: ca_path,
            cert: Some(cert),
            key: Some(key),
        },
        server,
    )
}
