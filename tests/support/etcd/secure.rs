//! A secured etcd for tests: TLS towards clients with client certificates required, and
//! authentication on — certificates made with `openssl` (Debian `openssl`) in a temp dir.

use std::path::PathBuf;
use std::process::Command;

use super::super::external::require;
use super::Etcd;

/// What a secured etcd asks of its clients.
#[derive(Clone)]
pub struct Secure {
    /// The CA that signed the server's and the client's certificates.
    pub ca: PathBuf,
    /// A client certificate (CN `waypost-client`, no etcd user: the password is what logs in)
    /// and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The `root` user's password (authentication is on).
    pub password: String,
}

impl Etcd {
    /// A single-member etcd serving clients over TLS only, requiring a client certificate signed
    /// by its CA, with authentication on (user `root`); ready. Certificates come from `openssl`.
    pub fn start_secure() -> Etcd {
        let certs_dir = tempfile::tempdir().unwrap();
        let certs = certs_dir.path().to_path_buf();
        make_certificates(&certs);
        let secure = Secure {
            ca: certs.join("ca.crt"),
            cert: certs.join("client.crt"),
            key: certs.join("client.key"),
            password: "r00t-pw".into(),
        };
        let mut e = Etcd::build(1, Some(secure.clone()), &certs);
        e.etcdctl(&["user", "add", &format!("root:{}", secure.password)]);
        e.etcdctl(&["auth", "enable"]);
        e.auth = true;
        e.certs = Some(certs_dir);
        e
    }
}

/// Makes, with `openssl` in `certs`, a test CA (`ca.crt`, `ca.key`), a server certificate for
/// 127.0.0.1 (`server.crt`, `server.key`, CN `etcd`) and a client certificate (`client.crt`,
/// `client.key`, CN `waypost-client`), all signed by the CA. Shared by the secured registries'
/// tests.
pub fn make_certificates(certs: &std::path::Path) {
    let openssl = require("openssl", "apt-get install -y openssl");
    let ssl = |args: &[&str]| {
        let out = Command::new(&openssl)
            .current_dir(certs)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    ssl(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=waypost test CA",
        ],
    ]
    .concat());
    for (name, cn, usage) in [
        ("server", "etcd", "serverAuth"),
        ("client", "waypost-client", "clientAuth"),
    ] {
        std::fs::write(
            certs.join(format!("{name}.ext")),
            format!("subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n"),
        )
        .unwrap();
        ssl(&[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        ]
        .concat());
        ssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.crt"),
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }
}
