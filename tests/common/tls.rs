//! The TLS side of the test services (`scripts/services.sh up`: a test CA, Postgres `ssl = on`
//! on its port, Redis on a TLS port) and client certificates issued for them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use super::{must, redis_url, service_url, Site};

/// Where the test services' TLS is: their CA and the Redis TLS URL.
pub struct TlsServices {
    /// ca.pem, ca.key, server.pem, server.key.
    pub dir: PathBuf,
    /// `REDIS_URL` (same DB number) as rediss:// on the TLS port.
    pub redis_url: String,
}

/// `JITOCSP_TEST_TLS_DIR` (or the one in `.local/env`; else this checkout's `.local/tls`) and
/// `JITOCSP_TEST_REDIS_TLS_PORT` (else the Redis port + 1). Call after
/// `skip_unless(&[Need::TlsServices, ...])`.
pub fn tls_services() -> TlsServices {
    let dir = service_url("JITOCSP_TEST_TLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join(".local/tls"));
    let mut redis = url::Url::parse(&redis_url()).expect("REDIS_URL");
    let tls_port = match service_url("JITOCSP_TEST_REDIS_TLS_PORT") {
        Ok(port) => port.parse().expect("JITOCSP_TEST_REDIS_TLS_PORT"),
        Err(_) => redis.port().expect("REDIS_URL has a port") + 1,
    };
    redis.set_scheme("rediss").unwrap();
    redis.set_port(Some(tls_port)).unwrap();
    TlsServices { dir, redis_url: redis.to_string() }
}

impl TlsServices {
    pub fn ca(&self) -> String {
        self.dir.join("ca.pem").display().to_string()
    }

    /// The configuration, as environment overrides, that reaches `site`'s database and Redis
    /// over TLS verified against `ca`: its URL with `sslmode=verify-full` (the host, 127.0.0.1,
    /// is in the server certificate), and the Redis TLS port. `channel_binding=require` makes
    /// the login fail unless the connector's tls-server-end-point binding is the server's.
    pub fn env(&self, site: &Site, ca: &str) -> Vec<(String, String)> {
        let pg = &site.database_url;
        let pg_url =
            format!("{pg}{}sslmode=verify-full&channel_binding=require", if pg.contains('?') { '&' } else { '?' });
        vec![
            ("JITOCSP_DATABASE_URL".into(), pg_url),
            ("JITOCSP_DATABASE_TLS_CA_FILE".into(), ca.into()),
            ("JITOCSP_REDIS_URL".into(), self.redis_url.clone()),
            ("JITOCSP_REDIS_TLS_CA_FILE".into(), ca.into()),
        ]
    }

    /// A client certificate `<name>.pem` and its key `<name>.key` (mode 0600) in `dir`, issued
    /// by the services' CA, which both servers trust.
    pub fn client(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        make_client(dir, name, &self.dir.join("ca.pem"), &self.dir.join("ca.key"))
    }
}

/// Environment pairs as `&str`, the form `Site::jitocsp` takes.
pub fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Everything a process printed: stdout, then stderr.
pub fn output_text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// A client certificate `<name>.pem` and its key `<name>.key` (mode 0600) in `dir`, issued
/// by the CA whose files are `ca_pem` and `ca_key`.
pub fn make_client(dir: &Path, name: &str, ca_pem: &Path, ca_key: &Path) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.pem"));
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    let csr = format!("{name}.csr");
    let new_key = [
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=jitocsp",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        &csr,
    ];
    must("openssl", &new_key, dir);
    let serial = format!("{name}.srl");
    let sign = [
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        ca_pem.to_str().unwrap(),
        "-CAkey",
        ca_key.to_str().unwrap(),
        "-CAcreateserial",
        "-CAserial",
        &serial,
        "-days",
        "30",
        "-extfile",
        ext.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ];
    must("openssl", &sign, dir);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    (cert, key)
}
