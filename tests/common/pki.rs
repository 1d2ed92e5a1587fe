//! Test PKIs made by openssl: CAs of any key type, leaves, delegated responders, requests.

use std::path::{Path, PathBuf};

use super::{must, unique};

/// A test CA (EC P-256) with leaf certificates, made by openssl in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        pki_with_ca(P256)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    /// Issues `NAME.pem` with serial `serial_hex`, valid for 30 days. (Expired certificates
    /// are imported in the stdin form with a past notAfter: OpenSSL 3.0 cannot back-date.)
    pub fn leaf(&self, name: &str, serial_hex: &str) -> PathBuf {
        self.leaf_with_extensions(name, serial_hex, None)
    }

    /// As [`Pki::leaf`], with X.509v3 extensions in openssl's `-extfile` syntax.
    pub fn leaf_with_extensions(&self, name: &str, serial_hex: &str, extensions: Option<&str>) -> PathBuf {
        let out = format!("{name}.pem");
        let serial = format!("0x{serial_hex}");
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &serial,
            "-days",
            "30",
            "-out",
            &out,
        ];
        let ext_file = format!("{name}.ext");
        if let Some(extensions) = extensions {
            std::fs::write(self.file(&ext_file), extensions).unwrap();
            args.extend_from_slice(&["-extfile", &ext_file]);
        }
        must("openssl", &args, self.path());
        self.file(&out)
    }

    /// A DER OCSP request for a serial of this CA, by serial alone.
    pub fn request_serial(&self, serial_hex: &str, digest: &str) -> Vec<u8> {
        let out = self.file(&format!("{}.req", unique("q")));
        let serial = format!("0x{serial_hex}");
        must(
            "openssl",
            &["ocsp", "-issuer", "ca.pem", digest, "-serial", &serial, "-no_nonce", "-reqout", out.to_str().unwrap()],
            self.path(),
        );
        std::fs::read(out).unwrap()
    }

    /// A DER OCSP request for `cert`, made by openssl (`-sha256` etc. via `digest`).
    pub fn request(&self, cert: &Path, digest: &str) -> Vec<u8> {
        self.request_certs(&[cert], digest)
    }

    /// One DER OCSP request with a CertID for each of `certs`, made by openssl.
    pub fn request_certs(&self, certs: &[&Path], digest: &str) -> Vec<u8> {
        let out = self.file(&format!("{}.req", unique("q")));
        let mut args = vec!["ocsp", "-issuer", "ca.pem", digest];
        for cert in certs {
            args.extend_from_slice(&["-cert", cert.to_str().unwrap()]);
        }
        args.extend_from_slice(&["-no_nonce", "-reqout", out.to_str().unwrap()]);
        must("openssl", &args, self.path());
        std::fs::read(out).unwrap()
    }
}

/// A test CA whose key is made by `openssl genpkey` with `ca_key_args` (e.g. an RSA or P-384
/// CA), with the same files as [`Pki::new`] (`ca.key` PKCS#8, `ca.pem`, `leaf.key`, `leaf.csr`).
pub fn pki_with_ca(ca_key_args: &[&str]) -> Pki {
    let pki = Pki { dir: tempfile::tempdir().unwrap() };
    let d = pki.path();
    make_ca(d, "ca", &unique("jitocsp test CA"), ca_key_args);
    must("openssl", &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "leaf.key"], d);
    must("openssl", &["req", "-new", "-key", "leaf.key", "-subj", "/CN=leaf", "-out", "leaf.csr"], d);
    pki
}

/// Makes a self-signed CA certificate `STEM.pem` named `cn`, with its PKCS#8 key `STEM.key`
/// made by `openssl genpkey` with `key_args`, in `dir`.
pub fn make_ca(dir: &Path, stem: &str, cn: &str, key_args: &[&str]) {
    let key = format!("{stem}.key");
    let cert = format!("{stem}.pem");
    let mut genpkey = vec!["genpkey", "-out", &key];
    genpkey.extend_from_slice(key_args);
    must("openssl", &genpkey, dir);
    let subject = format!("/O=jitocsp tests/CN={cn}");
    must(
        "openssl",
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &key,
            "-subj",
            &subject,
            "-days",
            "30",
            "-out",
            &cert,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        ],
        dir,
    );
}

/// `openssl genpkey` arguments for an EC P-256 key.
pub const P256: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];

/// A delegated OCSP responder certificate (id-kp-OCSPSigning, id-pkix-ocsp-nocheck) issued
/// by the PKI's CA, with a new key made by `openssl genpkey` with `key_args`. Returns the
/// paths of its PKCS#8 key and PEM certificate.
pub fn delegated_responder(pki: &Pki, key_args: &[&str]) -> (PathBuf, PathBuf) {
    let d = pki.path();
    let name = unique("responder");
    let (key, csr, cert, ext) =
        (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
    let mut genpkey = vec!["genpkey", "-out", key.as_str()];
    genpkey.extend_from_slice(key_args);
    must("openssl", &genpkey, d);
    must("openssl", &["req", "-new", "-key", &key, "-subj", "/CN=jitocsp test responder", "-out", &csr], d);
    std::fs::write(
        d.join(&ext),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=OCSPSigning\nnoCheck=ignored\n",
    )
    .unwrap();
    must(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "0x7e57",
            "-days",
            "30",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ],
        d,
    );
    (d.join(key), d.join(cert))
}
