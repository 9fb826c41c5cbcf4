//! Single-thread DKIM signing throughput, next to the raw `ring` cost.
//!
//! For each algorithm it times `Signer::sign` on a 3 KB message (relaxed/
//! relaxed, five signed headers, a quarter of the body lines needing
//! rewriting) and, as the floor, `ring` alone doing the work any DKIM signer
//! must do: SHA-256 over the same 3 KB and one signature. The ratio shows
//! what canonicalization and header assembly add.
//!
//! Run on one core, in release:
//! `taskset -c 0 cargo run --release -p tern-dkim --example dkim_bench [seconds-per-case]`

use ring::digest;
use ring::rand::SystemRandom;
use ring::signature::{self, Ed25519KeyPair, RsaKeyPair};
use std::hint::black_box;
use std::time::{Duration, Instant};
use tern_dkim::{Algorithm, Signer, SignerConfig};

const RSA_PEM: &str = include_str!("../tests/keys/rsa2048.pkcs8.pem");
const ED_PEM: &str = include_str!("../tests/keys/ed25519.pkcs8.pem");
const ED_DER: &[u8] = include_bytes!("../tests/keys/ed25519.pkcs8.der");

fn message(size: usize) -> Vec<u8> {
    let mut out = b"From: Sender <sender@example.com>\r\n\
To: recipient@example.net\r\n\
Subject: Your November statement is ready\r\n\
Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <bench.1@example.com>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n"
        .to_vec();
    // Mostly plain lines, with some that relaxed canonicalization rewrites
    // (a tab, a run of spaces, trailing space), as in real text bodies.
    let lines: [&[u8]; 4] = [
        b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod\r\n",
        b"tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim\r\n",
        b"veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea\r\n",
        b"\tcommodo consequat.  Duis aute irure dolor in reprehenderit in voluptate \r\n",
    ];
    for line in lines.iter().cycle() {
        if out.len() + line.len() > size {
            break;
        }
        out.extend_from_slice(line);
    }
    out.resize(size - 2, b'x');
    out.extend_from_slice(b"\r\n");
    out
}

/// Calls per second of `first` and of `second`, measured in alternating
/// slices so that load from other processes hits both alike.
fn paired_rates(budget: Duration, mut first: impl FnMut(), mut second: impl FnMut()) -> (f64, f64) {
    const SLICES: u32 = 10;
    let slice = budget / SLICES;
    let mut totals = [(0u64, Duration::ZERO); 2];
    for _ in 0..10 {
        first(); // warm up
        second();
    }
    for _ in 0..SLICES {
        for (index, total) in totals.iter_mut().enumerate() {
            let start = Instant::now();
            let mut count = 0u64;
            while start.elapsed() < slice {
                for _ in 0..10 {
                    if index == 0 { first() } else { second() }
                }
                count += 10;
            }
            total.0 += count;
            total.1 += start.elapsed();
        }
    }
    let rate = |(count, time): (u64, Duration)| count as f64 / time.as_secs_f64();
    (rate(totals[0]), rate(totals[1]))
}

fn signer(algorithm: Algorithm, pem: &str) -> Signer {
    let config: SignerConfig = serde_json::from_value(serde_json::json!({
        "domain": "example.com",
        "selector": "bench",
        "headers": ["From", "To", "Subject", "Date", "Message-ID"],
        "key": {"key_data": pem},
    }))
    .expect("bench config");
    Signer::new(&config, algorithm).expect("bench signer")
}

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(3.0);
    let budget = Duration::from_secs_f64(seconds);
    let message = message(3 * 1024);
    println!(
        "message: {} bytes; {seconds} s per case; one thread",
        message.len()
    );

    let rsa_signer = signer(Algorithm::RsaSha256, RSA_PEM);
    let rsa_der = {
        let body: String = RSA_PEM
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .expect("pem")
    };
    let rsa_key = RsaKeyPair::from_pkcs8(&rsa_der).expect("rsa key");
    let rng = SystemRandom::new();
    let mut rsa_signature = vec![0; rsa_key.public().modulus_len()];
    let (rsa_dkim, rsa_raw) = paired_rates(
        budget,
        || {
            black_box(rsa_signer.sign(black_box(&message)).unwrap());
        },
        || {
            rsa_key
                .sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    black_box(&message),
                    &mut rsa_signature,
                )
                .unwrap();
            black_box(&rsa_signature);
        },
    );

    let ed_signer = signer(Algorithm::Ed25519Sha256, ED_PEM);
    let ed_key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(ED_DER).expect("ed25519 key");
    let (ed_dkim, ed_raw) = paired_rates(
        budget,
        || {
            black_box(ed_signer.sign(black_box(&message)).unwrap());
        },
        || {
            let hash = digest::digest(&digest::SHA256, black_box(&message));
            black_box(ed_key.sign(hash.as_ref()));
        },
    );

    println!(
        "{:<10} {:>12} {:>12} {:>7} {:>14}",
        "algorithm", "dkim sign/s", "ring raw/s", "ratio", "added per sig"
    );
    for (name, dkim, raw) in [
        ("rsa-2048", rsa_dkim, rsa_raw),
        ("ed25519", ed_dkim, ed_raw),
    ] {
        println!(
            "{name:<10} {dkim:>12.0} {raw:>12.0} {:>6.1}% {:>11.1} us",
            100.0 * dkim / raw,
            1e6 / dkim - 1e6 / raw
        );
    }
}
