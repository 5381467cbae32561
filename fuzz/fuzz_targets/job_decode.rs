//! `Job::decode` on arbitrary bytes: never panics, and a job it accepts
//! survives its own wire form (`to_wire`, used to re-publish a retry):
//! decoding that gives back an equal job. The salvage and routing helpers
//! that run on refused payloads must not panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outreach::job::{self, Job, Salvaged};

fuzz_target!(|data: &[u8]| {
    let _ = Salvaged::from_payload(data);
    let _ = job::peek_tenant(data);
    let _ = job::routing_key(data);
    let decoded = Job::decode(data);
    if let Err(e) = &decoded {
        // Display and reason of every error must be computable.
        let _ = (e.to_string(), e.reason());
    }
    let Ok(job) = decoded else { return };
    let wire = serde_json::to_vec(&job.to_wire()).expect("a job's wire form serializes");
    match Job::decode(&wire) {
        Ok(again) => assert_eq!(
            again,
            job,
            "round trip changed the job; wire: {}",
            String::from_utf8_lossy(&wire)
        ),
        Err(e) => panic!(
            "the wire form of an accepted job is refused ({}: {e}); wire: {}",
            e.reason(),
            String::from_utf8_lossy(&wire)
        ),
    }
});
