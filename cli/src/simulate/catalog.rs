//! The package catalog of a simulated fleet: realistic-looking RHEL 9
//! package names and versions, deterministic from the seed.
//!
//! A host runs the *base* set (the same for every host: a core of real
//! package names — `kernel-core`, `glibc`, `openssl-libs`, `systemd`, ... —
//! filled up to the requested size with plausible generated names such as
//! `perl-File-Temp` or `python3-jinja2-doc`) plus the *extras* of its group
//! (`nginx` for web, `postgresql-server` for db, ...). Every name is unique
//! and every package has one architecture, so a host's package documents
//! (one per `name.arch`) number exactly `base + extras`.

use std::collections::BTreeSet;

use super::rng::Rng;

/// `E:V-R` of a package, as the sink writes it (`package.evr`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Evr {
    /// rpm EPOCH (`None` when unset).
    pub epoch: Option<i32>,
    /// rpm VERSION.
    pub version: String,
    /// rpm RELEASE.
    pub release: String,
}

impl Evr {
    /// A version without epoch.
    pub fn new(version: &str, release: &str) -> Evr {
        Evr {
            epoch: None,
            version: version.to_owned(),
            release: release.to_owned(),
        }
    }

    /// With an epoch.
    pub fn with_epoch(epoch: i32, version: &str, release: &str) -> Evr {
        Evr {
            epoch: Some(epoch),
            version: version.to_owned(),
            release: release.to_owned(),
        }
    }

    /// `E:V-R`, epoch 0 when unset: the form of `package.evr` and of
    /// `pkgstream drift`.
    pub fn label(&self) -> String {
        format!(
            "{}:{}-{}",
            self.epoch.unwrap_or(0),
            self.version,
            self.release
        )
    }
}

/// One package of the catalog, at the version the fleet starts with.
#[derive(Clone, Debug)]
pub struct CatalogPackage {
    /// rpm NAME.
    pub name: String,
    /// Installed version.
    pub evr: Evr,
    /// rpm ARCH (`x86_64` or `noarch`).
    pub arch: &'static str,
    /// Repository id.
    pub repo: &'static str,
    /// rpm VENDOR.
    pub vendor: &'static str,
    /// Installed size, bytes.
    pub size: i64,
    /// Build time, Unix seconds.
    pub buildtime: i64,
    /// Install-only (the kernel): an older version is installed beside it.
    pub previous: Option<Evr>,
}

/// What the traffic does to a few named packages (all in the core set).
pub mod names {
    /// Upgraded by the patch wave (one dnf transaction per host).
    pub const WAVE: [&str; 8] = [
        "openssl",
        "openssl-libs",
        "glibc",
        "glibc-common",
        "glibc-langpack-en",
        "curl",
        "libcurl",
        "sudo",
    ];
    /// Install-only packages the kernel update installs (and whose oldest
    /// version it removes).
    pub const KERNEL: [&str; 2] = ["kernel-core", "kernel-modules"];
    /// Removed by `dnf remove` on the prod hosts of the web and api groups.
    pub const CLEANUP: &str = "telnet";
    /// Rebuilt locally and installed with `rpm -Uvh` by a rogue admin.
    pub const ROGUE_UPGRADE: &str = "rsyslog";
    /// Removed with `rpm -e --nodeps` by a rogue admin.
    pub const ROGUE_REMOVE: &str = "firewalld";
    /// Downgraded with `rpm -Uvh --oldpackage` by a rogue admin.
    pub const ROGUE_DOWNGRADE: &str = "chrony";
    /// Installed with `rpm -ivh` by a rogue admin (not in the catalog).
    pub const ROGUE_INSTALL: &str = "acme-debug-tools";
}

/// Real package names of a RHEL 9 server, with the version they start at
/// (`None`: a generated version). The first entries are the ones the
/// traffic touches.
/// (name, (epoch, version, release)) — `None`: a generated version.
type CoreEntry = (
    &'static str,
    Option<(Option<i32>, &'static str, &'static str)>,
);

const CORE: &[CoreEntry] = &[
    ("openssl", Some((Some(1), "3.0.7", "27.el9"))),
    ("openssl-libs", Some((Some(1), "3.0.7", "27.el9"))),
    ("glibc", Some((None, "2.34", "100.el9"))),
    ("glibc-common", Some((None, "2.34", "100.el9"))),
    ("glibc-langpack-en", Some((None, "2.34", "100.el9"))),
    ("curl", Some((None, "7.76.1", "29.el9_4"))),
    ("libcurl", Some((None, "7.76.1", "29.el9_4"))),
    ("sudo", Some((None, "1.9.5p2", "10.el9_3"))),
    ("kernel-core", Some((None, "5.14.0", "427.16.1.el9_4"))),
    ("kernel-modules", Some((None, "5.14.0", "427.16.1.el9_4"))),
    ("telnet", Some((Some(1), "0.17", "85.el9"))),
    ("rsyslog", Some((None, "8.2310.0", "4.el9"))),
    ("firewalld", Some((None, "1.3.4", "1.el9"))),
    ("chrony", Some((None, "4.5", "1.el9"))),
    ("bash", Some((None, "5.1.8", "9.el9"))),
    ("systemd", Some((None, "252", "32.el9_4"))),
    ("systemd-libs", Some((None, "252", "32.el9_4"))),
    ("systemd-udev", Some((None, "252", "32.el9_4"))),
    ("dnf", Some((None, "4.14.0", "9.el9"))),
    ("rpm", Some((None, "4.16.1.3", "29.el9"))),
    ("rpm-libs", Some((None, "4.16.1.3", "29.el9"))),
    ("python3", Some((None, "3.9.18", "3.el9_4.1"))),
    ("python3-libs", Some((None, "3.9.18", "3.el9_4.1"))),
    ("openssh", Some((None, "8.7p1", "38.el9"))),
    ("openssh-server", Some((None, "8.7p1", "38.el9"))),
    ("openssh-clients", Some((None, "8.7p1", "38.el9"))),
    ("coreutils", Some((None, "8.32", "35.el9"))),
    ("util-linux", Some((None, "2.37.4", "18.el9"))),
    ("zlib", Some((None, "1.2.11", "40.el9"))),
    ("xz-libs", Some((None, "5.2.5", "8.el9_0"))),
    ("libselinux", None),
    ("selinux-policy", None),
    ("selinux-policy-targeted", None),
    ("NetworkManager", None),
    ("audit", None),
    ("audit-libs", None),
    ("ca-certificates", None),
    ("cronie", None),
    ("crypto-policies", None),
    ("cyrus-sasl-lib", None),
    ("dbus", None),
    ("dbus-libs", None),
    ("device-mapper", None),
    ("dracut", None),
    ("e2fsprogs", None),
    ("elfutils-libs", None),
    ("expat", None),
    ("file-libs", None),
    ("findutils", None),
    ("gawk", None),
    ("gdbm-libs", None),
    ("glib2", None),
    ("gmp", None),
    ("gnupg2", None),
    ("gnutls", None),
    ("gpgme", None),
    ("grep", None),
    ("grub2-common", None),
    ("grub2-pc", None),
    ("gzip", None),
    ("hostname", None),
    ("iproute", None),
    ("iptables-libs", None),
    ("iputils", None),
    ("json-c", None),
    ("keyutils-libs", None),
    ("kmod", None),
    ("krb5-libs", None),
    ("less", None),
    ("libacl", None),
    ("libarchive", None),
    ("libattr", None),
    ("libblkid", None),
    ("libcap", None),
    ("libcom_err", None),
    ("libdb", None),
    ("libffi", None),
    ("libgcc", None),
    ("libgcrypt", None),
    ("libgpg-error", None),
    ("libidn2", None),
    ("libmount", None),
    ("libnghttp2", None),
    ("libpsl", None),
    ("libpwquality", None),
    ("libseccomp", None),
    ("libsemanage", None),
    ("libsepol", None),
    ("libsmartcols", None),
    ("libsolv", None),
    ("libssh", None),
    ("libstdc++", None),
    ("libtasn1", None),
    ("libunistring", None),
    ("libuuid", None),
    ("libverto", None),
    ("libxcrypt", None),
    ("libxml2", None),
    ("libyaml", None),
    ("libzstd", None),
    ("logrotate", None),
    ("lua-libs", None),
    ("lz4-libs", None),
    ("ncurses", None),
    ("ncurses-libs", None),
    ("nettle", None),
    ("nspr", None),
    ("nss", None),
    ("nss-util", None),
    ("openldap", None),
    ("p11-kit", None),
    ("p11-kit-trust", None),
    ("pam", None),
    ("passwd", None),
    ("pcre", None),
    ("pcre2", None),
    ("polkit", None),
    ("policycoreutils", None),
    ("popt", None),
    ("procps-ng", None),
    ("psmisc", None),
    ("readline", None),
    ("sed", None),
    ("setup", None),
    ("shadow-utils", None),
    ("sqlite-libs", None),
    ("tar", None),
    ("tzdata", None),
    ("vim-minimal", None),
    ("which", None),
    ("yum", None),
    ("tuned", None),
    ("sssd-client", None),
    ("rsync", None),
    ("lsof", None),
    ("strace", None),
    ("tcpdump", None),
    ("bind-utils", None),
    ("net-tools", None),
    ("sos", None),
    ("insights-client", None),
    ("subscription-manager", None),
    ("qemu-guest-agent", None),
    ("cloud-init", None),
    ("irqbalance", None),
    ("kexec-tools", None),
    ("microcode_ctl", None),
    ("linux-firmware", None),
    ("man-db", None),
    ("prefixdevname", None),
    ("lvm2", None),
    ("xfsprogs", None),
    ("parted", None),
    ("authselect", None),
    ("dmidecode", None),
    ("ethtool", None),
    ("jq", None),
    ("git-core", None),
    ("tmux", None),
    ("wget", None),
    ("unzip", None),
    ("zip", None),
    ("bzip2", None),
];

/// Group extras: the same count for every group (so every host has the
/// same number of packages).
pub const EXTRAS_PER_GROUP: usize = 10;

const EXTRAS: &[(&str, [&str; EXTRAS_PER_GROUP])] = &[
    (
        "web",
        [
            "nginx",
            "nginx-core",
            "nginx-filesystem",
            "mod_ssl",
            "httpd-tools",
            "php-fpm",
            "php-cli",
            "php-common",
            "php-mysqlnd",
            "certbot",
        ],
    ),
    (
        "api",
        [
            "java-17-openjdk-headless",
            "tomcat",
            "tomcat-lib",
            "haproxy",
            "nodejs",
            "npm",
            "python3-gunicorn",
            "python3-flask",
            "redis-tools",
            "jemalloc",
        ],
    ),
    (
        "db",
        [
            "postgresql-server",
            "postgresql",
            "postgresql-contrib",
            "postgresql-libs",
            "pgbouncer",
            "pg_repack",
            "mariadb-server",
            "mariadb-connector-c",
            "xfsdump",
            "numactl",
        ],
    ),
    (
        "cache",
        [
            "redis",
            "memcached",
            "libmemcached-awesome",
            "varnish",
            "varnish-libs",
            "stunnel",
            "keepalived",
            "ipvsadm",
            "libevent",
            "hiredis",
        ],
    ),
    (
        "batch",
        [
            "slurm",
            "slurm-slurmd",
            "munge",
            "munge-libs",
            "openmpi",
            "hwloc-libs",
            "environment-modules",
            "R-core",
            "gcc-gfortran",
            "lapack",
        ],
    ),
    (
        "build",
        [
            "gcc",
            "gcc-c++",
            "make",
            "cmake",
            "rpm-build",
            "mock",
            "git",
            "autoconf",
            "automake",
            "libtool",
        ],
    ),
    (
        "mq",
        [
            "kafka-server",
            "zookeeper",
            "rabbitmq-server",
            "erlang-erts",
            "erlang-kernel",
            "erlang-ssl",
            "librdkafka",
            "java-11-openjdk-headless",
            "lz4",
            "snappy",
        ],
    ),
    (
        "monitor",
        [
            "prometheus",
            "node_exporter",
            "alertmanager",
            "grafana",
            "blackbox_exporter",
            "telegraf",
            "collectd",
            "collectd-rrdtool",
            "rrdtool",
            "net-snmp-utils",
        ],
    ),
];

/// The host groups, in a fixed order, with their share of the fleet (per mille).
pub const GROUPS: [(&str, u64); 8] = [
    ("web", 300),
    ("api", 150),
    ("db", 100),
    ("cache", 80),
    ("batch", 150),
    ("build", 80),
    ("mq", 60),
    ("monitor", 80),
];

const PREFIXES: &[&str] = &[
    "perl-",
    "python3-",
    "lib",
    "golang-",
    "rubygem-",
    "texlive-",
    "xorg-x11-",
    "java-",
    "nodejs-",
    "php-pecl-",
    "qt5-",
    "gstreamer1-",
    "mingw64-",
    "rust-",
    "ghc-",
    "ocaml-",
];
const STEMS: &[&str] = &[
    "yaml",
    "jinja2",
    "requests",
    "urllib3",
    "six",
    "dateutil",
    "idna",
    "chardet",
    "cryptography",
    "cffi",
    "pyasn1",
    "ply",
    "pycparser",
    "setuptools",
    "pip",
    "wheel",
    "babel",
    "markupsafe",
    "pytz",
    "decorator",
    "File-Temp",
    "Data-Dumper",
    "Getopt-Long",
    "Text-ParseWords",
    "Time-Local",
    "Scalar-List-Utils",
    "Storable",
    "Socket",
    "IO-Socket-SSL",
    "Net-SSLeay",
    "URI",
    "Digest-MD5",
    "Encode",
    "Exporter",
    "Carp",
    "constant",
    "PathTools",
    "Pod-Usage",
    "Term-ANSIColor",
    "threads",
    "xml2",
    "xslt",
    "jpeg-turbo",
    "png",
    "tiff",
    "webp",
    "gif",
    "exif",
    "raw1394",
    "usb",
    "pcap",
    "nl3",
    "mnl",
    "nftnl",
    "ndp",
    "evdev",
    "input",
    "drm",
    "gbm",
    "epoxy",
    "fontconfig",
    "freetype",
    "harfbuzz",
    "pango",
    "cairo",
    "pixman",
    "atk",
    "gtk3",
    "gdk-pixbuf2",
    "librsvg2",
    "lcms2",
    "openjpeg2",
    "poppler",
    "ghostscript",
    "cups-libs",
    "avahi-libs",
    "bluez-libs",
    "alsa-lib",
    "pulseaudio-libs",
    "flac",
    "protobuf",
    "grpc",
    "abseil-cpp",
    "re2",
    "snappy-devel",
    "leveldb",
    "lmdb",
    "rocksdb",
    "tbb",
    "boost-system",
    "boost-thread",
    "boost-regex",
    "boost-filesystem",
    "icu",
    "double-conversion",
    "fmt",
    "spdlog",
    "gflags",
    "glog",
    "thrift",
    "net-tools",
    "sysstat",
    "iotop",
    "htop",
    "atop",
    "nmon",
    "perf",
    "bpftrace",
    "bcc-tools",
    "systemtap",
    "valgrind",
    "gdb",
    "ltrace",
    "elfutils",
    "binutils",
    "patch",
    "diffutils",
    "m4",
    "bison",
    "flex",
];
const SUFFIXES: &[&str] = &[
    "",
    "-devel",
    "-libs",
    "-common",
    "-doc",
    "-tools",
    "-utils",
    "-data",
    "-static",
    "-debuginfo",
];
const SYLLABLES: &[&str] = &[
    "ka", "zo", "ri", "mu", "te", "lan", "vor", "dex", "qui", "bel", "nor", "sha", "pix", "tor",
    "gle", "fen",
];
const REPOS: [&str; 3] = ["baseos", "appstream", "epel"];

/// The packages every host runs and each group's extras.
#[derive(Clone, Debug)]
pub struct Catalog {
    /// The base set, the same on every host (core names first).
    pub base: Vec<CatalogPackage>,
    /// Extras per group, in [`GROUPS`] order.
    pub extras: Vec<Vec<CatalogPackage>>,
}

/// The fewest packages per host the catalog can build (the core the
/// traffic needs plus the group extras).
pub const MIN_PACKAGES: usize = 64;
/// The most packages per host (a snapshot must stay well under Kafka's
/// 1 MiB message limit).
pub const MAX_PACKAGES: usize = 4000;

fn generated_version(rng: &mut Rng) -> Evr {
    let version = match rng.below(4) {
        0 => format!("{}.{}", rng.below(10), rng.below(30)),
        1 => format!("{}.{}.{}", rng.below(5), rng.below(20), rng.below(40)),
        2 => format!("{}.{}", 1 + rng.below(3), rng.below(100)),
        _ => format!("{}.{}.{}", rng.below(3), rng.below(10), rng.below(10)),
    };
    let release = match rng.below(5) {
        0 => format!("{}.el9_4", 1 + rng.below(12)),
        1 => format!("{}.el9_3", 1 + rng.below(12)),
        _ => format!("{}.el9", 1 + rng.below(40)),
    };
    let epoch = (rng.below(12) == 0).then(|| 1 + rng.below(3) as i32);
    Evr {
        epoch,
        version,
        release,
    }
}

fn package(name: String, evr: Evr, rng: &mut Rng, repo: &'static str) -> CatalogPackage {
    let noarch = name.starts_with("perl-")
        || name.starts_with("python3-")
        || name.ends_with("-doc")
        || name.ends_with("-data")
        || name == "tzdata"
        || name == "ca-certificates"
        || name == "linux-firmware";
    CatalogPackage {
        name,
        evr,
        arch: if noarch { "noarch" } else { "x86_64" },
        repo,
        vendor: if repo == "epel" {
            "Fedora Project"
        } else {
            "Red Hat, Inc."
        },
        size: 20_000 + rng.below(30_000_000) as i64,
        // 2023-06 .. 2024-06
        buildtime: 1_685_000_000 + rng.below(31_000_000) as i64,
        previous: None,
    }
}

impl Catalog {
    /// Builds the catalog for `packages` packages per host (checked by the
    /// caller to be in `MIN_PACKAGES..=MAX_PACKAGES`).
    pub fn new(seed: u64, packages: usize) -> Catalog {
        let mut rng = Rng::new(seed ^ 0xca7a_1065);
        let mut taken: BTreeSet<String> = EXTRAS
            .iter()
            .flat_map(|(_, e)| e.iter().map(|s| (*s).to_owned()))
            .collect();
        let base_count = packages - EXTRAS_PER_GROUP;
        let mut base = Vec::with_capacity(base_count);
        for (name, v) in CORE.iter().take(base_count) {
            let evr = match v {
                Some((e, v, r)) => Evr {
                    epoch: *e,
                    version: (*v).to_owned(),
                    release: (*r).to_owned(),
                },
                None => generated_version(&mut rng),
            };
            let repo = if name.starts_with("kernel") || name.starts_with("glibc") {
                "baseos"
            } else {
                REPOS[rng.below(2) as usize]
            };
            let mut p = package((*name).to_owned(), evr, &mut rng, repo);
            if names::KERNEL.contains(name) {
                p.previous = Some(Evr::new("5.14.0", "427.13.1.el9_4"));
            }
            taken.insert(p.name.clone());
            base.push(p);
        }
        // Fill up with plausible generated names: prefix + stem + suffix,
        // then invented stems once those run out.
        let mut i: u64 = 0;
        while base.len() < base_count {
            let n = i as usize;
            i += 1;
            let combos = PREFIXES.len() * STEMS.len() * SUFFIXES.len();
            let name = if n < combos {
                let p = PREFIXES[n % PREFIXES.len()];
                let s = STEMS[(n / PREFIXES.len()) % STEMS.len()];
                let x = SUFFIXES[n / (PREFIXES.len() * STEMS.len())];
                // Perl stems take the perl- prefix only, Python-ish ones python3-.
                let perlish = s.chars().next().is_some_and(|c| c.is_ascii_uppercase());
                if perlish != (p == "perl-") {
                    continue;
                }
                format!("{p}{s}{x}")
            } else {
                let mut h = Rng::new(n as u64);
                let syl = (0..2 + h.below(2))
                    .map(|_| SYLLABLES[h.below(SYLLABLES.len() as u64) as usize])
                    .collect::<String>();
                format!("lib{syl}{}", SUFFIXES[h.below(4) as usize])
            };
            // Spread the pick over the whole combination space, not in order.
            if rng.below(3) != 0 && n < combos {
                continue;
            }
            if taken.insert(name.clone()) {
                let evr = generated_version(&mut rng);
                let repo = REPOS[rng.below(3) as usize];
                base.push(package(name, evr, &mut rng, repo));
            }
            if i > 10_000_000 {
                break;
            }
        }
        let extras = GROUPS
            .iter()
            .map(|(g, _)| {
                let list = EXTRAS
                    .iter()
                    .find(|(eg, _)| eg == g)
                    .map(|(_, l)| *l)
                    .unwrap_or_default();
                list.iter()
                    .map(|n| {
                        let evr = generated_version(&mut rng);
                        package((*n).to_owned(), evr, &mut rng, "appstream")
                    })
                    .collect()
            })
            .collect();
        Catalog { base, extras }
    }

    /// A base package by name.
    pub fn base_package(&self, name: &str) -> Option<&CatalogPackage> {
        self.base.iter().find(|p| p.name == name)
    }
}

/// A newer release of `evr` (`27.el9` → `28.el9_4`; `427.16.1.el9_4` →
/// `427.18.1.el9_4` for the kernel).
pub fn patched(evr: &Evr) -> Evr {
    let mut out = evr.clone();
    let (n, rest) = leading_number(&evr.release);
    let n = n.unwrap_or(0);
    if let Some(tail) = rest.strip_prefix(".16.1") {
        out.release = format!("{n}.18.1{tail}");
    } else {
        let dist = rest.split('_').next().unwrap_or(".el9");
        out.release = format!("{}{dist}_4", n + 1);
    }
    out
}

/// An older release of `evr` (`4.el9` → `2.el9`, `1.el9` → `0.1.el9`).
pub fn older(evr: &Evr) -> Evr {
    let mut out = evr.clone();
    match leading_number(&evr.release) {
        (Some(n), rest) if n >= 2 => out.release = format!("{}{rest}", n - 2),
        _ => out.release = format!("0.{}", evr.release),
    }
    out
}

/// A release's leading number and the rest (`27.el9` → `(Some(27), ".el9")`).
fn leading_number(release: &str) -> (Option<u64>, &str) {
    let digits = release.len()
        - release
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .len();
    (release[..digits].parse().ok(), &release[digits..])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_unique_names() {
        for n in [MIN_PACKAGES, 200, 1500, MAX_PACKAGES] {
            let c = Catalog::new(7, n);
            assert_eq!(c.base.len() + EXTRAS_PER_GROUP, n);
            for (g, extras) in c.extras.iter().enumerate() {
                assert_eq!(extras.len(), EXTRAS_PER_GROUP, "group {g}");
                let names: BTreeSet<&str> = c
                    .base
                    .iter()
                    .chain(extras)
                    .map(|p| p.name.as_str())
                    .collect();
                assert_eq!(names.len(), n, "names unique for {n}");
            }
        }
        let c = Catalog::new(7, MIN_PACKAGES);
        for n in names::WAVE.iter().chain(&names::KERNEL).chain(&[
            names::CLEANUP,
            names::ROGUE_UPGRADE,
            names::ROGUE_REMOVE,
            names::ROGUE_DOWNGRADE,
        ]) {
            assert!(c.base_package(n).is_some(), "{n} in the smallest catalog");
        }
        assert!(c.base_package(names::ROGUE_INSTALL).is_none());
    }

    #[test]
    fn versions_move_the_right_way() {
        let e = Evr::with_epoch(1, "3.0.7", "27.el9");
        assert_eq!(patched(&e).label(), "1:3.0.7-28.el9_4");
        assert_eq!(
            patched(&Evr::new("5.14.0", "427.16.1.el9_4")).release,
            "427.18.1.el9_4"
        );
        assert_eq!(patched(&Evr::new("252", "32.el9_4")).release, "33.el9_4");
        assert_eq!(older(&Evr::new("4.5", "4.el9")).release, "2.el9");
        assert_eq!(older(&Evr::new("4.5", "1.el9")).release, "0.1.el9");
        assert_eq!(Evr::new("2.34", "100.el9").label(), "0:2.34-100.el9");
    }
}
