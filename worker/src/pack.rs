//! Packs: several events in one AMQP message. The sequencer moves events into a partition in
//! packs, so the second hop of the partitioned layout costs the broker one message per pack
//! rather than one per event (as Kafka batches records). A pack keeps each event whole — its
//! routing key, its AMQP properties and its body — and in order; a partition's consumer unpacks
//! it and applies the events as if each had been delivered alone, and acks the pack once every
//! one of them is settled.
//!
//! The body is [`BINARY`] (four bytes) and then a sequence of frames, each `u32` length
//! (big-endian) then bytes: routing key, properties (as AMQP encodes them in a content header),
//! body; three frames per event. A body without that mark is the first format, with the
//! properties as JSON (as lapin serialises them): packs a worker of an earlier version left in a
//! partition are read as before. The AMQP encoding is a third of the JSON's size (a header's
//! bytes were a JSON array of numbers) and cheaper to write and read, for the sequencer, the
//! broker and the partition's consumer alike.

use lapin::BasicProperties;
use lapin::protocol::basic::{gen_properties, parse_properties};
use lapin::types::ShortString;

use automation_shared::messaging::{self, PERSISTENT};

/// The content type of a pack.
pub const CONTENT_TYPE: &str = "application/vnd.automation-engine.pack";
/// The header with the number of events in a pack.
pub const EVENTS_HEADER: &str = "x-pack-events";
/// The most events in one pack.
pub const MAX_EVENTS: usize = 100;
/// How a body with the properties in AMQP's encoding begins: no body of the first format can (its
/// first frame, a routing key, is shorter than 16 MiB, so its first byte is 0).
pub const BINARY: [u8; 4] = [0xff, b'p', b'k', 2];

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

/// How many events a delivery carries: a pack's count, else 1. A partition's consumer splits
/// packs across batches by this count, so it is never more than a pack holds: a header that
/// claims more (a pack not of the sequencer's making) cannot make it cut one delivery into
/// endless empty parts. The last part takes whatever is left, so a low count loses nothing.
pub fn events_in(properties: &BasicProperties) -> usize {
    if is_pack(properties) {
        messaging::int_header(properties, EVENTS_HEADER)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(1)
            .clamp(1, MAX_EVENTS)
    } else {
        1
    }
}

/// A pack of `events` (at most [`MAX_EVENTS`]): its properties and body.
pub fn pack<'a>(
    events: impl IntoIterator<Item = (&'a str, &'a BasicProperties, &'a [u8])> + Clone,
) -> (BasicProperties, Vec<u8>) {
    // Properties that came off the wire always encode; should one not, the pack is written in
    // the first format instead, which takes anything.
    let (body, count) = binary_body(events.clone()).unwrap_or_else(|| json_body(events));
    let properties =
        BasicProperties::default().with_content_type(ShortString::from(CONTENT_TYPE)).with_delivery_mode(PERSISTENT);
    (messaging::set_int_header(properties, EVENTS_HEADER, count), body)
}

fn binary_body<'a>(
    events: impl IntoIterator<Item = (&'a str, &'a BasicProperties, &'a [u8])>,
) -> Option<(Vec<u8>, i64)> {
    let mut body = BINARY.to_vec();
    let mut count = 0i64;
    for (routing_key, properties, data) in events {
        push_frame(&mut body, routing_key.as_bytes());
        // The frame's length goes in front once the properties are written after it.
        let at = body.len();
        body.extend_from_slice(&[0; 4]);
        body = gen_properties(properties)(body.into()).ok()?.write;
        let length = u32::try_from(body.len() - at - 4).ok()?;
        body[at..at + 4].copy_from_slice(&length.to_be_bytes());
        push_frame(&mut body, data);
        count += 1;
    }
    Some((body, count))
}

fn json_body<'a>(events: impl IntoIterator<Item = (&'a str, &'a BasicProperties, &'a [u8])>) -> (Vec<u8>, i64) {
    let mut body = Vec::new();
    let mut count = 0i64;
    for (routing_key, properties, data) in events {
        let properties = serde_json::to_vec(properties).unwrap_or_default();
        for frame in [routing_key.as_bytes(), properties.as_slice(), data] {
            push_frame(&mut body, frame);
        }
        count += 1;
    }
    (body, count)
}

fn push_frame(body: &mut Vec<u8>, frame: &[u8]) {
    body.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    body.extend_from_slice(frame);
}

/// The events of a pack, in order; `None` if the body is not a well-formed pack.
pub fn unpack(body: &[u8]) -> Option<Vec<Packed>> {
    let (binary, frames) = match body.strip_prefix(&BINARY) {
        Some(frames) => (true, frames),
        None => (false, body),
    };
    let mut events = Vec::new();
    let mut at = 0;
    let frame = |at: &mut usize| -> Option<&[u8]> {
        let length = u32::from_be_bytes(frames.get(*at..*at + 4)?.try_into().ok()?) as usize;
        let bytes = frames.get(*at + 4..(*at + 4).checked_add(length)?)?;
        *at += 4 + length;
        Some(bytes)
    };
    while at < frames.len() {
        let routing_key = String::from_utf8(frame(&mut at)?.to_vec()).ok()?;
        let encoded = frame(&mut at)?;
        let properties: BasicProperties = if binary {
            match parse_properties(encoded) {
                Ok(([], properties)) => properties,
                _ => return None,
            }
        } else {
            serde_json::from_slice(encoded).ok()?
        };
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
    fn the_count_a_pack_claims_is_never_more_than_a_pack_holds() {
        let (properties, _) = pack([("audit.recorded", &BasicProperties::default(), &b"{}"[..])]);
        assert_eq!(events_in(&properties), 1);
        for (claimed, counted) in [(0, 1), (-5, 1), (40, 40), (i64::from(u32::MAX), MAX_EVENTS), (i64::MAX, MAX_EVENTS)]
        {
            let forged = messaging::set_int_header(properties.clone(), EVENTS_HEADER, claimed);
            assert_eq!(events_in(&forged), counted, "a pack claiming {claimed} events");
        }
        assert_eq!(events_in(&BasicProperties::default()), 1, "a single event");
    }

    #[test]
    fn a_pack_of_the_first_format_is_still_read() {
        let first = messaging::cloud_event_properties("e-1", "approval.requested");
        let (body, count) = json_body([("approval.requested", &first, &b"{\"a\":1}"[..])]);
        assert_eq!(count, 1);
        assert_ne!(body.get(..4), Some(&BINARY[..]));
        let events = unpack(&body).expect("a well-formed pack of the first format");
        assert_eq!(
            events,
            vec![Packed { routing_key: "approval.requested".into(), properties: first, body: b"{\"a\":1}".to_vec() }]
        );
    }

    #[test]
    fn the_amqp_encoding_is_the_smaller() {
        let properties =
            messaging::cloud_event_properties("0b7c2a52-3d4c-4d7e-9a51-8d2f3c1e6b90", "approval.requested");
        let event = [("approval.requested", &properties, &b"{}"[..])];
        let (_, binary) = pack(event);
        let (json, _) = json_body(event);
        assert_eq!(binary.get(..4), Some(&BINARY[..]));
        assert!(binary.len() * 2 < json.len(), "{} bytes against {}", binary.len(), json.len());
    }

    #[test]
    fn a_cut_or_garbled_pack_is_refused() {
        let (_, body) = pack([("audit.recorded", &BasicProperties::default(), &b"{}"[..])]);
        assert!(unpack(&body[..body.len() - 1]).is_none());
        assert!(unpack(b"\x00\x00\x00\x09abc").is_none());
        assert_eq!(unpack(b"").map(|e| e.len()), Some(0));
        assert_eq!(unpack(&BINARY).map(|e| e.len()), Some(0));
        // Properties that do not parse, or parse with bytes left over.
        let mut garbled = BINARY.to_vec();
        for frame in [&b"audit.recorded"[..], b"\xff\xff\x00", b"{}"] {
            push_frame(&mut garbled, frame);
        }
        assert!(unpack(&garbled).is_none());
        assert!(unpack(&[&BINARY[..], b"\xff\xff\xff\xff"].concat()).is_none());
    }
}
