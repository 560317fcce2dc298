//! Packs: several events in one AMQP message. The sequencer moves events into a partition in
//! packs, so the second hop of the partitioned layout costs the broker one message per pack
//! rather than one per event (as Kafka batches records). A pack keeps each event whole — its
//! routing key, its AMQP properties and its body — and in order; a partition's consumer unpacks
//! it and applies the events as if each had been delivered alone, and acks the pack once every
//! one of them is settled.
//!
//! The body is a sequence of frames, each `u32` length (big-endian) then bytes: routing key,
//! properties (JSON, as lapin serialises them), body; three frames per event.

use lapin::BasicProperties;
use lapin::types::ShortString;

use automation_shared::messaging::{self, PERSISTENT};

/// The content type of a pack.
pub const CONTENT_TYPE: &str = "application/vnd.automation-engine.pack";
/// The header with the number of events in a pack.
pub const EVENTS_HEADER: &str = "x-pack-events";
/// The most events in one pack.
pub const MAX_EVENTS: usize = 100;

/// One event of a pack, whole.
#[derive(Debug, Clone, PartialEq)]
pub struct Packed {
    pub routing_key: String,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

/// Is this message a pack?
pub fn is_pack(properties: &BasicProperties) -> bool {
    properties.content_type().as_ref().is_some_and(|c| c.as_str() == CONTENT_TYPE)
}

/// How many events a delivery carries: a pack's count, else 1.
pub fn events_in(properties: &BasicProperties) -> usize {
    if is_pack(properties) {
        messaging::int_header(properties, EVENTS_HEADER).and_then(|n| usize::try_from(n).ok()).unwrap_or(1).max(1)
    } else {
        1
    }
}

/// A pack of `events` (at most [`MAX_EVENTS`]): its properties and body.
pub fn pack<'a>(
    events: impl IntoIterator<Item = (&'a str, &'a BasicProperties, &'a [u8])>,
) -> (BasicProperties, Vec<u8>) {
    let mut body = Vec::new();
    let mut count = 0i64;
    for (routing_key, properties, data) in events {
        let properties = serde_json::to_vec(properties).unwrap_or_default();
        for frame in [routing_key.as_bytes(), properties.as_slice(), data] {
            body.extend_from_slice(&(frame.len() as u32).to_be_bytes());
            body.extend_from_slice(frame);
        }
        count += 1;
    }
    let properties =
        BasicProperties::default().with_content_type(ShortString::from(CONTENT_TYPE)).with_delivery_mode(PERSISTENT);
    (messaging::set_int_header(properties, EVENTS_HEADER, count), body)
}

/// The events of a pack, in order; `None` if the body is not a well-formed pack.
pub fn unpack(body: &[u8]) -> Option<Vec<Packed>> {
    let mut events = Vec::new();
    let mut at = 0;
    let frame = |at: &mut usize| -> Option<&[u8]> {
        let length = u32::from_be_bytes(body.get(*at..*at + 4)?.try_into().ok()?) as usize;
        let bytes = body.get(*at + 4..*at + 4 + length)?;
        *at += 4 + length;
        Some(bytes)
    };
    while at < body.len() {
        let routing_key = String::from_utf8(frame(&mut at)?.to_vec()).ok()?;
        let properties: BasicProperties = serde_json::from_slice(frame(&mut at)?).ok()?;
        let body = frame(&mut at)?.to_vec();
        events.push(Packed { routing_key, properties, body });
    }
    Some(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pack_keeps_each_event_whole_and_in_order() {
        let first = messaging::cloud_event_properties("e-1", "approval.requested");
        let second = messaging::set_header(BasicProperties::default(), "ce_id", "e-2");
        let (properties, body) =
            pack([("approval.requested", &first, &b"{\"a\":1}"[..]), ("approval.decided", &second, &b"{}"[..])]);
        assert!(is_pack(&properties));
        assert_eq!(messaging::int_header(&properties, EVENTS_HEADER), Some(2));
        let events = unpack(&body).expect("a well-formed pack");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].routing_key, "approval.requested");
        assert_eq!(events[0].properties, first);
        assert_eq!(events[0].body, b"{\"a\":1}");
        assert_eq!(events[1].routing_key, "approval.decided");
        assert_eq!(messaging::header(&events[1].properties, "ce_id").as_deref(), Some("e-2"));
    }

    #[test]
    fn a_cut_or_garbled_pack_is_refused() {
        let (_, body) = pack([("audit.recorded", &BasicProperties::default(), &b"{}"[..])]);
        assert!(unpack(&body[..body.len() - 1]).is_none());
        assert!(unpack(b"\x00\x00\x00\x09abc").is_none());
        assert_eq!(unpack(b"").map(|e| e.len()), Some(0));
    }
}
