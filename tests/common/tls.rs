//! The TLS side of the test services (`scripts/services.sh up`: a test CA, Postgres `ssl = on`
//! on its port, Redis on a TLS port) and client certificates issued for them.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use super::{cluster_tls_seeds, must, primaries_serving_slots, redis_cli_raw, redis_url, service_url, tls_dir, Site};

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
    let dir = tls_dir();
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

    /// As [`TlsServices::env`], with the TLS-only test Redis Cluster as Redis
    /// (`redis.mode = "cluster"`): its seeds as `scheme://HOST:PORT` URLs, `rediss` for TLS.
    pub fn cluster_env(&self, site: &Site, ca: &str, scheme: &str) -> Vec<(String, String)> {
        let seeds: Vec<String> = cluster_tls_seeds().iter().map(|seed| format!("{scheme}://{seed}")).collect();
        let mut env = self.env(site, ca);
        env.retain(|(k, _)| k != "JITOCSP_REDIS_URL");
        env.push(("JITOCSP_REDIS_URL".into(), seeds[0].clone()));
        env.push(("JITOCSP_REDIS_MODE".into(), "cluster".into()));
        env.push(("JITOCSP_REDIS_NODES".into(), seeds.join(",")));
        env
    }

    /// Every key under `prefix` in the TLS-only test Redis Cluster, with its value, read by
    /// redis-cli over TLS verified by the services' CA (not by the client under test): SCAN
    /// on each primary, and GET there.
    pub fn cluster_entries(&self, prefix: &str) -> BTreeMap<String, Vec<u8>> {
        let ca = self.ca();
        let tls = ["--tls", "--cacert", ca.as_str(), "-h", "127.0.0.1"];
        let seed = cluster_tls_seeds()[0].rsplit(':').next().expect("HOST:PORT").to_owned();
        let nodes = String::from_utf8_lossy(&redis_cli_raw(&tls, &seed, &["cluster", "nodes"])).into_owned();
        let primaries = primaries_serving_slots(&nodes);
        assert!(!primaries.is_empty(), "no primaries in the TLS cluster's CLUSTER NODES: {nodes}");
        let mut entries = BTreeMap::new();
        for port in primaries {
            let keys = redis_cli_raw(&tls, &port, &["--scan", "--pattern", &format!("{prefix}:*")]);
            for key in String::from_utf8_lossy(&keys).lines().filter(|k| !k.is_empty()) {
                // Not on a terminal, redis-cli prints the raw value and a newline.
                let mut value = redis_cli_raw(&tls, &port, &["get", key]);
                assert_eq!(value.pop(), Some(b'\n'), "GET {key} on {port}");
                entries.insert(key.to_owned(), value);
            }
        }
        entries
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
