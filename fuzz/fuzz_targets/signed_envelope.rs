//! The agent's check of a signed desired document or command: any bytes on its desired or
//! commands topic, against a fixed trusted key. Also a valid envelope around fuzzed
//! document bytes, so the document parser behind a good signature is reached too.
#![no_main]

use edgefleet_protocol::command::Command;
use edgefleet_protocol::signing::{DocumentSigner, verify, verify_as};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let signer = DocumentSigner::from_secret(&[7; 32]);
    let trusted = signer.verifying_key();
    let _ = verify(&trusted, data);
    let _ = verify_as::<Command>(&trusted, data);
    // Signed by the trusted key: only JSON documents can be signed at all.
    let signed = signer.sign_bytes(data);
    let _ = verify(&trusted, &signed);
    let _ = verify_as::<Command>(&trusted, &signed);
});
