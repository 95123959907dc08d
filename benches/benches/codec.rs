//! Codec throughput: pkgstream's `Encoder`/`decode_change` (serde_avro_fast
//! underneath, single-object framing, semantic validation both ways) side by
//! side with the apache-avro `Value` path on the same schema text, plus the
//! decode of a 1500-package inventory snapshot.
//!
//! `cargo bench -p pkgstream-benches --bench codec`; figures and targets in
//! BENCHMARKS.md. The `*/serde_avro_fast_raw` rows are a diagnostic: the
//! library alone (no header, no validation, no registry lookup), to show what
//! pkgstream's layer on top costs. The `*/handwritten_experiment` rows are
//! another: a schema-specific positional codec written for this bench only
//! (same bytes, same validation, checked equal at start-up), to show what
//! the hardware allows without serde's by-name field protocol.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::borrow::Cow;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pkgstream_schemas::{decode_change, decode_snapshot, sample, validate, Action, Encoder, EventId, Host, Kind, Package, PackageChange, Registry, Source, Transaction};
use serde_avro_fast::ser::SerializerConfig;

/// Distinct pre-built samples the loops rotate over, so no bench measures
/// one cached input. A power of two: the index is masked, not divided.
const DISTINCT: usize = 64;

fn samples() -> (Vec<PackageChange<'static>>, Vec<Vec<u8>>) {
    let events: Vec<_> = (0..DISTINCT as u64).map(sample::change).collect();
    let mut enc = Encoder::new();
    let bytes = events
        .iter()
        .map(|e| {
            let mut out = Vec::new();
            enc.encode_change(e, &mut out).unwrap();
            out
        })
        .collect();
    (events, bytes)
}

fn change(c: &mut Criterion) {
    let (events, bytes) = samples();
    let sizes: Vec<usize> = bytes.iter().map(Vec::len).collect();
    let mean = sizes.iter().sum::<usize>() / sizes.len();
    println!(
        "PackageChange event size: {mean} bytes mean ({}..={} over {DISTINCT} samples), single-object encoded incl. the 10-byte header",
        sizes.iter().min().unwrap(),
        sizes.iter().max().unwrap()
    );
    println!("PackageChange in memory: {} bytes (moved by value through the serde visitors on decode)", std::mem::size_of::<PackageChange<'_>>());
    let current = Registry::get().current(Kind::PackageChange);
    for (e, b) in events.iter().zip(&bytes) {
        let mut out = Vec::new();
        handwritten::encode(e, &current.fingerprint, &mut out).unwrap();
        assert_eq!(&out, b, "the handwritten experiment writes the same bytes as Encoder");
        assert_eq!(&handwritten::decode(b, &current.fingerprint).unwrap(), e, "and reads them back");
    }
    let avro_schema = apache_avro::Schema::parse_str(current.json).unwrap();

    let mut g = c.benchmark_group("change");
    g.throughput(Throughput::ElementsAndBytes { elements: 1, bytes: mean as u64 });

    g.bench_function("encode/pkgstream", |b| {
        let mut enc = Encoder::new();
        let mut buf = Vec::with_capacity(1024);
        let mut i = 0;
        b.iter(|| {
            buf.clear();
            enc.encode_change(black_box(&events[i]), &mut buf).unwrap();
            i = (i + 1) % DISTINCT;
            black_box(&buf);
        })
    });
    g.bench_function("encode/apache_avro_value", |b| {
        let mut i = 0;
        b.iter(|| {
            let value = apache_avro::to_value(black_box(&events[i])).unwrap().resolve(&avro_schema).unwrap();
            let datum = apache_avro::to_avro_datum(&avro_schema, value).unwrap();
            i = (i + 1) % DISTINCT;
            black_box(datum)
        })
    });
    g.bench_function("encode/serde_avro_fast_raw", |b| {
        let mut config = SerializerConfig::new(&current.schema);
        let mut buf = Vec::with_capacity(1024);
        let mut i = 0;
        b.iter(|| {
            buf.clear();
            serde_avro_fast::to_datum(black_box(&events[i]), &mut buf, &mut config).unwrap();
            i = (i + 1) % DISTINCT;
            black_box(&buf);
        })
    });

    g.bench_function("encode/handwritten_experiment", |b| {
        let fp = current.fingerprint;
        let mut buf = Vec::with_capacity(1024);
        let mut i = 0;
        b.iter(|| {
            buf.clear();
            handwritten::encode(black_box(&events[i]), &fp, &mut buf).unwrap();
            i = (i + 1) % DISTINCT;
            black_box(&buf);
        })
    });

    g.bench_function("decode/pkgstream", |b| {
        let mut i = 0;
        b.iter(|| {
            let e = decode_change(black_box(&bytes[i])).unwrap();
            i = (i + 1) % DISTINCT;
            black_box(e)
        })
    });
    g.bench_function("decode/apache_avro_value", |b| {
        let mut i = 0;
        b.iter(|| {
            let v = apache_avro::from_avro_datum(&avro_schema, &mut &bytes[i][10..], None).unwrap();
            i = (i + 1) % DISTINCT;
            black_box(v)
        })
    });
    g.bench_function("decode/serde_avro_fast_raw", |b| {
        let mut i = 0;
        b.iter(|| {
            let e: PackageChange<'_> = serde_avro_fast::from_datum_slice(black_box(&bytes[i][10..]), &current.schema).unwrap();
            i = (i + 1) % DISTINCT;
            black_box(e)
        })
    });
    g.bench_function("decode/handwritten_experiment", |b| {
        let fp = current.fingerprint;
        let mut i = 0;
        b.iter(|| {
            let e = handwritten::decode(black_box(&bytes[i]), &fp).unwrap();
            i = (i + 1) % DISTINCT;
            black_box(e)
        })
    });
    g.bench_function("validate_only", |b| {
        let mut i = 0;
        b.iter(|| {
            validate::change(black_box(&events[i])).unwrap();
            i = (i + 1) % DISTINCT;
        })
    });
    g.finish();
}

fn snapshot(c: &mut Criterion) {
    let snapshot = sample::snapshot(1, 1500);
    let mut bytes = Vec::new();
    Encoder::new().encode_snapshot(&snapshot, &mut bytes).unwrap();
    println!("InventorySnapshot event size: {} bytes for {} packages", bytes.len(), snapshot.packages.len());
    let mut g = c.benchmark_group("snapshot_1500");
    g.throughput(Throughput::ElementsAndBytes { elements: 1, bytes: bytes.len() as u64 });
    g.bench_function("decode/pkgstream", |b| b.iter(|| black_box(decode_snapshot(black_box(&bytes)).unwrap())));
    g.finish();
}

/// A positional Avro codec for `PackageChange` v1 written by hand, for the
/// experiment rows only: what encode/decode cost without serde's by-name
/// field matching, union lookup by name and generic visitor dispatch. It
/// knows one schema version, so it is no replacement for the codec.
mod handwritten {
    use super::*;

    pub type Result<T> = std::result::Result<T, &'static str>;

    fn long(out: &mut Vec<u8>, n: i64) {
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        while z >= 0x80 {
            out.push(z as u8 | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }
    fn string(out: &mut Vec<u8>, s: &str) {
        long(out, s.len() as i64);
        out.extend_from_slice(s.as_bytes());
    }
    fn opt_long(out: &mut Vec<u8>, v: Option<i64>) {
        match v {
            None => out.push(0),
            Some(v) => {
                out.push(2);
                long(out, v);
            }
        }
    }
    fn opt_string(out: &mut Vec<u8>, v: &Option<Cow<'_, str>>) {
        match v {
            None => out.push(0),
            Some(s) => {
                out.push(2);
                string(out, s);
            }
        }
    }
    fn package(out: &mut Vec<u8>, p: &Package<'_>) {
        string(out, &p.name);
        opt_long(out, p.epoch.map(i64::from));
        string(out, &p.version);
        string(out, &p.release);
        string(out, &p.arch);
        opt_string(out, &p.repo);
        opt_string(out, &p.vendor);
        opt_long(out, p.buildtime);
        opt_long(out, p.install_time);
        opt_long(out, p.size);
        opt_string(out, &p.digest);
    }

    pub fn encode(e: &PackageChange<'_>, fingerprint: &[u8; 8], out: &mut Vec<u8>) -> Result<()> {
        validate::change(e).map_err(|_| "invalid")?;
        out.extend_from_slice(&[0xC3, 0x01]);
        out.extend_from_slice(fingerprint);
        out.extend_from_slice(&e.event_id.0);
        long(out, e.event_time);
        for s in [&e.host.machine_id, &e.host.hostname, &e.host.os_id, &e.host.os_version, &e.host.arch] {
            string(out, s);
        }
        long(out, e.source as i64);
        long(out, e.action as i64);
        package(out, &e.package);
        match &e.replaced {
            None => out.push(0),
            Some(p) => {
                out.push(2);
                package(out, p);
            }
        }
        let t = &e.transaction;
        long(out, t.rpm_tid);
        opt_long(out, t.history_id);
        opt_string(out, &t.command_line);
        opt_string(out, &t.login_user);
        opt_long(out, t.start_time);
        Ok(())
    }

    struct Reader<'b> {
        rest: &'b [u8],
    }

    impl<'b> Reader<'b> {
        fn long(&mut self) -> Result<i64> {
            let mut z = 0u64;
            for (k, &byte) in self.rest.iter().enumerate().take(10) {
                z |= u64::from(byte & 0x7f) << (7 * k);
                if byte < 0x80 {
                    self.rest = &self.rest[k + 1..];
                    return Ok((z >> 1) as i64 ^ -((z & 1) as i64));
                }
            }
            Err("bad varint")
        }
        fn bytes(&mut self, n: usize) -> Result<&'b [u8]> {
            if self.rest.len() < n {
                return Err("truncated");
            }
            let (head, tail) = self.rest.split_at(n);
            self.rest = tail;
            Ok(head)
        }
        fn str(&mut self) -> Result<Cow<'b, str>> {
            let n = usize::try_from(self.long()?).map_err(|_| "negative length")?;
            std::str::from_utf8(self.bytes(n)?).map(Cow::Borrowed).map_err(|_| "bad utf-8")
        }
        fn union<T>(&mut self, some: impl FnOnce(&mut Self) -> Result<T>) -> Result<Option<T>> {
            match self.long()? {
                0 => Ok(None),
                1 => some(self).map(Some),
                _ => Err("bad union branch"),
            }
        }
        fn package(&mut self) -> Result<Package<'b>> {
            Ok(Package {
                name: self.str()?,
                epoch: self.union(|r| r.long().and_then(|v| i32::try_from(v).map_err(|_| "int out of range")))?,
                version: self.str()?,
                release: self.str()?,
                arch: self.str()?,
                repo: self.union(Self::str)?,
                vendor: self.union(Self::str)?,
                buildtime: self.union(Self::long)?,
                install_time: self.union(Self::long)?,
                size: self.union(Self::long)?,
                digest: self.union(Self::str)?,
            })
        }
    }

    pub fn decode<'b>(bytes: &'b [u8], fingerprint: &[u8; 8]) -> Result<PackageChange<'b>> {
        let (header, datum) = bytes.split_first_chunk::<10>().ok_or("truncated header")?;
        if header[..2] != [0xC3, 0x01] || &header[2..] != fingerprint {
            return Err("not PackageChange v1");
        }
        let mut r = Reader { rest: datum };
        let event_id = EventId(r.bytes(16)?.try_into().map_err(|_| "truncated")?);
        let event_time = r.long()?;
        let host = Host { machine_id: r.str()?, hostname: r.str()?, os_id: r.str()?, os_version: r.str()?, arch: r.str()? };
        let source = match r.long()? {
            0 => Source::Dnf,
            1 => Source::Yum,
            2 => Source::Rpm,
            3 => Source::Inventory,
            _ => return Err("bad Source"),
        };
        let action = match r.long()? {
            0 => Action::Install,
            1 => Action::Upgrade,
            2 => Action::Downgrade,
            3 => Action::Reinstall,
            4 => Action::Remove,
            5 => Action::Obsolete,
            _ => return Err("bad Action"),
        };
        let package = r.package()?;
        let replaced = r.union(Reader::package)?;
        let transaction = Transaction {
            rpm_tid: r.long()?,
            history_id: r.union(Reader::long)?,
            command_line: r.union(Reader::str)?,
            login_user: r.union(Reader::str)?,
            start_time: r.union(Reader::long)?,
        };
        let e = PackageChange { event_id, event_time, host, source, action, package, replaced, transaction };
        validate::change(&e).map_err(|_| "invalid")?;
        Ok(e)
    }
}

fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4))
}

criterion_group! { name = benches; config = config(); targets = change, snapshot }
criterion_main!(benches);
