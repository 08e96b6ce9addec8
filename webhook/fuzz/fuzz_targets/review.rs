//! Fuzzes the AdmissionReview parser: any bytes must produce a response, never a panic, and the
//! response must always be a JSON AdmissionReview that carries an answer.
#![no_main]

use braid_webhook::inject::InjectSettings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let settings = InjectSettings {
        proxy_image: "braid.local/braid-proxy:dev".into(),
        log_level: "info".into(),
        cpu_request: "10m".into(),
        memory_request: "16Mi".into(),
        memory_limit: "64Mi".into(),
        native_sidecar: true,
        version: "fuzz".into(),
    };
    let (answer, _) = braid_webhook::review::review(data, &settings);
    let json = serde_json::to_value(&answer).expect("a response always serializes");
    assert!(json["response"]["allowed"].is_boolean());
});
