//! Micro benchmark of the DATA decoder: decodes a ~3 KB dot-stuffed message
//! many times, in one piece and in 1 KiB reads, and prints MB/s.
//!
//! Run with `cargo run --release -p tern-smtp --example data_decode_bench`.

use std::hint::black_box;
use std::time::Instant;
use tern_smtp::client::encode_data;
use tern_smtp::{DataDecoder, DataLimits};

/// A plausible 3 KB message: headers, then 76-column body lines, some of
/// them starting with a dot so unstuffing is exercised.
fn sample_message() -> Vec<u8> {
    let mut msg = Vec::new();
    msg.extend_from_slice(
        b"Received: from client.example (192.0.2.1) by mx.example with ESMTP\r\n\
          From: Sender <sender@example.com>\r\nTo: rcpt@example.net\r\n\
          Subject: benchmark message\r\nMessage-ID: <bench@example.com>\r\n\
          MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
    );
    let mut n = 0;
    while msg.len() < 3000 {
        if n % 10 == 3 {
            msg.push(b'.');
        }
        msg.extend_from_slice(
            b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod t",
        );
        msg.extend_from_slice(b"\r\n");
        n += 1;
    }
    msg
}

fn run(label: &str, wire: &[u8], chunk: usize, iterations: usize) {
    let mut decoder = DataDecoder::new(DataLimits::default());
    let start = Instant::now();
    let mut total = 0usize;
    for _ in 0..iterations {
        let mut offset = 0;
        loop {
            let end = (offset + chunk).min(wire.len());
            let progress = decoder.decode(black_box(&wire[offset..end]));
            offset += progress.consumed;
            if let Some(result) = progress.finished {
                total += black_box(result.expect("message decodes")).len();
                break;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let mb = (wire.len() * iterations) as f64 / 1e6;
    println!(
        "{label:<22} {iterations} messages of {} bytes: {:.1} MB/s, {:.0} messages/s (decoded {total} bytes)",
        wire.len(),
        mb / secs,
        iterations as f64 / secs,
    );
}

fn main() {
    let wire = encode_data(&sample_message());
    let iterations = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    run("whole message", &wire, usize::MAX, iterations);
    run("1 KiB reads", &wire, 1024, iterations);
}
