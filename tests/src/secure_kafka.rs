//! The secured Kafka of `scripts/services.sh start kafka-secure`: SASL_SSL
//! (SCRAM-SHA-512) for the central stages, SSL with a client certificate
//! for hosts, least-privilege ACLs on the default topic names as prefixes.
//! Addresses from `PKGSTREAM_TEST_KAFKA_SECURE` (default 127.0.0.1:9194)
//! and `PKGSTREAM_TEST_KAFKA_SECURE_MTLS` (127.0.0.1:9195); certificates
//! and passwords from `PKGSTREAM_TEST_KAFKA_SECURE_PKI` (default
//! `~/.cache/pkgstream/run/kafka-secure/pki`).

use std::path::PathBuf;

use crate::router::RouterEnv;
use crate::sinks::SinkEnv;
use crate::{unique, EmitEnv};

/// The secured broker and its test credentials.
pub struct SecureKafka {
    /// SASL_SSL bootstrap (central stages).
    pub sasl: String,
    /// SSL bootstrap with required client certificates (hosts).
    pub mtls: String,
    /// The CA, certificates, keys and `<user>.password` files.
    pub pki: PathBuf,
}

impl SecureKafka {
    /// The running secured broker; the helpers' own clients on it (topic
    /// creation, reading topics back) are its admin.
    pub fn get() -> SecureKafka {
        let pki = std::env::var_os("PKGSTREAM_TEST_KAFKA_SECURE_PKI")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let home = std::env::var_os("PKGSTREAM_HOME").map_or_else(
                    || {
                        PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                            .join(".cache/pkgstream")
                    },
                    PathBuf::from,
                );
                home.join("run/kafka-secure/pki")
            });
        assert!(
            pki.join(".done").exists(),
            "no secured Kafka PKI in {}: run `scripts/services.sh start kafka-secure` (scripts/test.sh does)",
            pki.display()
        );
        SecureKafka::at(
            std::env::var("PKGSTREAM_TEST_KAFKA_SECURE")
                .unwrap_or_else(|_| "127.0.0.1:9194".into()),
            std::env::var("PKGSTREAM_TEST_KAFKA_SECURE_MTLS")
                .unwrap_or_else(|_| "127.0.0.1:9195".into()),
            pki,
        )
    }

    /// The secured broker at `sasl` and `mtls` whose PKI is `pki`; the
    /// helpers' own clients on it are its admin.
    pub fn at(sasl: String, mtls: String, pki: PathBuf) -> SecureKafka {
        let k = SecureKafka { sasl, mtls, pki };
        crate::register_client_properties(
            &k.sasl,
            &[
                ("security.protocol", "sasl_ssl".into()),
                ("sasl.mechanism", "SCRAM-SHA-512".into()),
                ("sasl.username", "admin".into()),
                ("sasl.password", k.password("admin")),
                ("ssl.ca.location", k.file("ca.pem")),
            ],
        );
        k
    }

    /// A file of the PKI, as a string path.
    pub fn file(&self, name: &str) -> String {
        self.pki.join(name).display().to_string()
    }

    /// The SCRAM password of `user`.
    pub fn password(&self, user: &str) -> String {
        std::fs::read_to_string(self.pki.join(format!("{user}.password")))
            .expect("password file")
            .trim()
            .to_owned()
    }

    /// `PKGSTREAM__KAFKA__*` for a central stage logging in as `user` over
    /// SASL_SSL, the password from its file.
    pub fn central_vars(&self, user: &str) -> Vec<(String, String)> {
        vec![
            ("PKGSTREAM__KAFKA__BROKERS".into(), self.sasl.clone()),
            (
                "PKGSTREAM__KAFKA__SECURITY_PROTOCOL".into(),
                "SASL_SSL".into(),
            ),
            ("PKGSTREAM__KAFKA__SSL_CA_FILE".into(), self.file("ca.pem")),
            (
                "PKGSTREAM__KAFKA__SASL_MECHANISM".into(),
                "SCRAM-SHA-512".into(),
            ),
            ("PKGSTREAM__KAFKA__SASL_USERNAME".into(), user.into()),
            (
                "PKGSTREAM__KAFKA__SASL_PASSWORD_FILE".into(),
                self.file(&format!("{user}.password")),
            ),
        ]
    }

    /// `<PREFIX>__KAFKA__*` for the host certificate over mTLS (`PKGSTREAM_EMIT`
    /// for the emitter; `PKGSTREAM` for a central command run with it).
    pub fn host_vars(&self, prefix: &str) -> Vec<(String, String)> {
        vec![
            (format!("{prefix}__KAFKA__BROKERS"), self.mtls.clone()),
            (format!("{prefix}__KAFKA__SECURITY_PROTOCOL"), "SSL".into()),
            (format!("{prefix}__KAFKA__SSL_CA_FILE"), self.file("ca.pem")),
            (
                format!("{prefix}__KAFKA__SSL_CERTIFICATE_FILE"),
                self.file("host.pem"),
            ),
            (
                format!("{prefix}__KAFKA__SSL_KEY_FILE"),
                self.file("host.key"),
            ),
        ]
    }

    /// A topic name under the default `name` (which the ACLs allow as a
    /// prefix), unique to this run.
    pub fn topic(name: &str) -> String {
        unique(&format!("{name}.t"))
    }

    /// A router environment on this broker: topics under the default
    /// names (the ACLs' prefixes), group and transactional id under
    /// `pkgstream-router`, logged in as the router principal.
    pub fn router_env(&self, name: &str) -> RouterEnv {
        let mut router = RouterEnv::with_topic_names(&self.sasl, name, |role| {
            let default = match role {
                "changes-raw" => "pkgstream.changes.raw",
                "inventory-raw" => "pkgstream.inventory.raw",
                "hosts" => "pkgstream.hosts",
                "enriched" => "pkgstream.changes.enriched",
                _ => "pkgstream.dlq",
            };
            SecureKafka::topic(default)
        });
        let id = unique(&format!("pkgstream-router.{name}"));
        let mut with = self.central_vars("pkgstream-router");
        with.push(("PKGSTREAM__ROUTER__GROUP_ID".into(), format!("{id}-group")));
        with.push((
            "PKGSTREAM__ROUTER__TRANSACTIONAL_ID".into(),
            format!("{id}-txn"),
        ));
        override_vars(&mut router.vars, with);
        router
    }

    /// A host spool shipping over mTLS, as the host principal, to the raw
    /// topics of `router`.
    pub fn host_env(&self, router: &RouterEnv, name: &str) -> EmitEnv {
        let mut emit = EmitEnv::new(&self.mtls, name);
        let mut with = self.host_vars("PKGSTREAM_EMIT");
        with.push((
            "PKGSTREAM_EMIT__TOPICS__CHANGES_RAW".into(),
            router.changes_raw.clone(),
        ));
        with.push((
            "PKGSTREAM_EMIT__TOPICS__INVENTORY_RAW".into(),
            router.inventory_raw.clone(),
        ));
        with.push(("PKGSTREAM_EMIT__FLUSH__TIMEOUT_SECS".into(), "20".into()));
        override_vars(&mut emit.vars, with);
        emit.changes_topic = router.changes_raw.clone();
        emit.inventory_topic = router.inventory_raw.clone();
        emit
    }

    /// Both sinks' environment on this broker, logged in as the sink
    /// principal: reading `router`'s enriched topic, dead letters to its
    /// DLQ, groups under `pkgstream-sink`.
    pub fn sink_env(&self, router: &RouterEnv, name: &str) -> SinkEnv {
        let mut sinks = SinkEnv::new(&self.sasl, name);
        let id = unique(&format!("pkgstream-sink.{name}"));
        let mut with = self.central_vars("pkgstream-sink");
        with.extend([
            (
                "PKGSTREAM__TOPICS__CHANGES_ENRICHED".to_owned(),
                router.enriched.clone(),
            ),
            ("PKGSTREAM__TOPICS__DLQ".to_owned(), router.dlq.clone()),
            (
                "PKGSTREAM__SEARCH_SINK__GROUP_ID".to_owned(),
                format!("{id}-search"),
            ),
            (
                "PKGSTREAM__METRICS_SINK__GROUP_ID".to_owned(),
                format!("{id}-metrics"),
            ),
        ]);
        override_vars(&mut sinks.vars, with);
        sinks.enriched = router.enriched.clone();
        sinks.dlq = router.dlq.clone();
        sinks
    }
}

/// `vars` with every key of `with` replaced by (or added as) its value.
pub fn override_vars(vars: &mut Vec<(String, String)>, with: Vec<(String, String)>) {
    vars.retain(|(k, _)| !with.iter().any(|(w, _)| w == k));
    vars.extend(with);
}

/// A secured broker of a test's own (`scripts/services.sh start
/// kafka-secure` with its own run dir, PKI, SCRAM users, ACLs and free
/// ports), so killing it disturbs no other test. Stopped when dropped.
pub struct PrivateSecureKafka {
    run_dir: tempfile::TempDir,
    ports: [u16; 4],
    /// The broker, its addresses and PKI.
    pub kafka: SecureKafka,
}

impl PrivateSecureKafka {
    /// A started one (about a minute: certificates, format, ACLs).
    pub fn started() -> PrivateSecureKafka {
        let run_dir = tempfile::tempdir().expect("tempdir");
        let ports = [(); 4].map(|_| crate::router::free_port());
        let k = PrivateSecureKafka {
            kafka: SecureKafka {
                sasl: format!("127.0.0.1:{}", ports[0]),
                mtls: format!("127.0.0.1:{}", ports[1]),
                pki: run_dir.path().join("kafka-secure/pki"),
            },
            run_dir,
            ports,
        };
        let out = k.script("start");
        assert!(
            out.status.success(),
            "services.sh start kafka-secure: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Its admin's credentials exist now: the helpers' clients use them.
        let mut k = k;
        k.kafka = SecureKafka::at(
            k.kafka.sasl.clone(),
            k.kafka.mtls.clone(),
            k.kafka.pki.clone(),
        );
        k
    }

    fn script(&self, action: &str) -> std::process::Output {
        let names = [
            "KAFKA_SECURE_PORT",
            "KAFKA_SECURE_MTLS_PORT",
            "KAFKA_SECURE_CONTROLLER_PORT",
            "KAFKA_SECURE_INTERNAL_PORT",
        ];
        let env: Vec<(&str, String)> = names
            .iter()
            .zip(self.ports)
            .map(|(n, p)| (*n, p.to_string()))
            .collect();
        crate::services::services_script(self.run_dir.path(), &env, &[action, "kafka-secure"])
    }

    /// Kills the broker outright (SIGKILL) and waits until its ports are
    /// closed: Kafka down, as a crash looks to its clients.
    pub fn kill(&self) {
        let pid = std::fs::read_to_string(self.run_dir.path().join("kafka-secure/kafka.pid"))
            .expect("broker pid file");
        let status = std::process::Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -KILL {pid}");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(&self.kafka.sasl).is_ok() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "broker still answers"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateSecureKafka {
    fn drop(&mut self) {
        let _ = self.script("stop");
    }
}
