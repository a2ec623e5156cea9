//! The six MQTT 3.1.1 exchanges miop-bench needs (CONNECT/CONNACK,
//! SUBSCRIBE/SUBACK, PINGREQ/PINGRESP, PUBLISH/PUBACK, DISCONNECT), encoded
//! and decoded by the codec of `rumqttc` (`rumqttc::mqttbytes::v4`), the
//! maintained home of what used to be the `mqttbytes` crate. Only its codec is
//! used: rumqttc's client runs an event loop task and a request channel per
//! connection, which a load generator holding tens of thousands of idle
//! connections per thread cannot afford; each benchmark connection is one
//! task owning its socket (see `conn.rs`).
//!
//! Encoding writes into the caller's buffer and decoding splits frames off the
//! connection's read buffer, so pings and acks allocate nothing per message.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{Connect, Packet, PubAck, Publish, Subscribe};
pub use rumqttc::mqttbytes::v4::{ConnectReturnCode, SubscribeReasonCode};
use rumqttc::mqttbytes::Error;
pub use rumqttc::mqttbytes::QoS;

/// Largest packet accepted from the broker: pushes of the benchmark are small;
/// anything bigger is a protocol error rather than unbounded buffering.
pub const MAX_PACKET: usize = 1 << 20;

/// What the broker can send a benchmark client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    ConnAck(ConnectReturnCode),
    SubAck {
        pkid: u16,
        codes: Vec<SubscribeReasonCode>,
    },
    Publish {
        qos: QoS,
        pkid: u16,
        payload: Bytes,
    },
    PubAck(u16),
    PingResp,
    /// Anything else (valid MQTT, but nothing a subscriber expects).
    Other(&'static str),
}

/// Splits one packet off the front of `buf`; `Ok(None)` means more bytes are
/// needed (nothing is consumed then).
pub fn decode(buf: &mut BytesMut) -> Result<Option<Incoming>, String> {
    let packet = match Packet::read(buf, MAX_PACKET) {
        Ok(p) => p,
        Err(Error::InsufficientBytes(_)) => return Ok(None),
        Err(e) => return Err(format!("bad MQTT packet from the broker: {e}")),
    };
    Ok(Some(match packet {
        Packet::ConnAck(a) => Incoming::ConnAck(a.code),
        Packet::SubAck(a) => Incoming::SubAck {
            pkid: a.pkid,
            codes: a.return_codes,
        },
        Packet::Publish(p) => Incoming::Publish {
            qos: p.qos,
            pkid: p.pkid,
            payload: p.payload,
        },
        Packet::PubAck(a) => Incoming::PubAck(a.pkid),
        Packet::PingResp => Incoming::PingResp,
        Packet::Connect(_) => Incoming::Other("CONNECT"),
        Packet::PubRec(_) => Incoming::Other("PUBREC"),
        Packet::PubRel(_) => Incoming::Other("PUBREL"),
        Packet::PubComp(_) => Incoming::Other("PUBCOMP"),
        Packet::Subscribe(_) => Incoming::Other("SUBSCRIBE"),
        Packet::Unsubscribe(_) => Incoming::Other("UNSUBSCRIBE"),
        Packet::UnsubAck(_) => Incoming::Other("UNSUBACK"),
        Packet::PingReq => Incoming::Other("PINGREQ"),
        Packet::Disconnect => Incoming::Other("DISCONNECT"),
    }))
}

/// CONNECT, MQTT 3.1.1 (level 4), clean session, no will. `keep_alive` in
/// seconds (0 disables the broker's keep-alive check).
pub fn connect(
    out: &mut BytesMut,
    client_id: &str,
    keep_alive: u16,
    login: Option<(&str, &str)>,
) -> Result<(), String> {
    let mut c = Connect::new(client_id);
    c.keep_alive = keep_alive;
    c.clean_session = true;
    if let Some((user, pass)) = login {
        c.set_login(user, pass);
    }
    c.write(out).map(drop).map_err(|e| e.to_string())
}

/// SUBSCRIBE to one topic filter.
pub fn subscribe(out: &mut BytesMut, pkid: u16, topic: &str, qos: QoS) -> Result<(), String> {
    let mut s = Subscribe::new(topic, qos);
    s.pkid = pkid;
    s.write(out).map(drop).map_err(|e| e.to_string())
}

/// PUBLISH; `pkid` is ignored at QoS 0.
pub fn publish(
    out: &mut BytesMut,
    topic: &str,
    qos: QoS,
    pkid: u16,
    payload: Bytes,
) -> Result<(), String> {
    let mut p = Publish::from_bytes(topic, qos, payload);
    if qos != QoS::AtMostOnce {
        p.pkid = pkid;
    }
    p.write(out).map(drop).map_err(|e| e.to_string())
}

/// PUBACK for a QoS 1 PUBLISH received.
pub fn puback(out: &mut BytesMut, pkid: u16) {
    // Two fixed bytes and the packet id: cannot fail.
    let _ = PubAck::new(pkid).write(out);
}

pub fn pingreq(out: &mut BytesMut) {
    out.extend_from_slice(&[0xC0, 0x00]);
}

pub fn disconnect(out: &mut BytesMut) {
    out.extend_from_slice(&[0xE0, 0x00]);
}

/// Byte vectors from the MQTT 3.1.1 specification (OASIS Standard, 2014):
/// section numbers in each test.
#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
        let mut b = BytesMut::new();
        f(&mut b);
        b.to_vec()
    }

    #[test]
    fn connect_matches_the_spec_layout() {
        // 3.1: fixed header 0x10, remaining length; 3.1.2.1 protocol name
        // 00 04 'MQTT'; 3.1.2.2 level 4; 3.1.2.3 flags (clean session = 0x02,
        // + user name 0x80 + password 0x40); 3.1.2.10 keep alive MSB LSB;
        // 3.1.3 payload: client id, user name, password, each length-prefixed.
        let c = bytes(|b| connect(b, "a", 30, None).unwrap());
        assert_eq!(
            c,
            [0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 1, b'a']
        );
        let c = bytes(|b| connect(b, "id", 10, Some(("u", "pw"))).unwrap());
        assert_eq!(
            c,
            [
                0x10, 21, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 10, 0, 2, b'i', b'd', 0, 1,
                b'u', 0, 2, b'p', b'w'
            ]
        );
    }

    #[test]
    fn connack_return_codes() {
        // 3.2: 0x20 0x02, acknowledge flags, return code (table 3.1).
        let mut b = BytesMut::from(&[0x20, 0x02, 0x00, 0x00][..]);
        assert_eq!(
            decode(&mut b).unwrap(),
            Some(Incoming::ConnAck(ConnectReturnCode::Success))
        );
        assert!(b.is_empty());
        let mut b = BytesMut::from(&[0x20, 0x02, 0x00, 0x05][..]);
        assert_eq!(
            decode(&mut b).unwrap(),
            Some(Incoming::ConnAck(ConnectReturnCode::NotAuthorized))
        );
    }

    #[test]
    fn subscribe_and_suback() {
        // 3.8: 0x82 (reserved flags 0010), packet id 10 (the spec's example),
        // topic filter "a/b", requested QoS 1.
        let s = bytes(|b| subscribe(b, 10, "a/b", QoS::AtLeastOnce).unwrap());
        assert_eq!(s, [0x82, 8, 0, 10, 0, 3, b'a', b'/', b'b', 1]);
        // 3.9.3 example: return codes 0 (QoS 0), 2 (QoS 2), 0x80 (failure).
        let mut b = BytesMut::from(&[0x90, 5, 0, 10, 0x00, 0x02, 0x80][..]);
        assert_eq!(
            decode(&mut b).unwrap(),
            Some(Incoming::SubAck {
                pkid: 10,
                codes: vec![
                    SubscribeReasonCode::Success(QoS::AtMostOnce),
                    SubscribeReasonCode::Success(QoS::ExactlyOnce),
                    SubscribeReasonCode::Failure
                ]
            })
        );
    }

    #[test]
    fn publish_and_puback() {
        // 3.3.2.3 example: topic "a/b", packet id 10; QoS 1 sets bits 1-2 of
        // the first byte (0x32).
        let p =
            bytes(|b| publish(b, "a/b", QoS::AtLeastOnce, 10, Bytes::from_static(b"hi")).unwrap());
        assert_eq!(p, [0x32, 9, 0, 3, b'a', b'/', b'b', 0, 10, b'h', b'i']);
        // QoS 0 has no packet id.
        let p =
            bytes(|b| publish(b, "a/b", QoS::AtMostOnce, 10, Bytes::from_static(b"hi")).unwrap());
        assert_eq!(p, [0x30, 7, 0, 3, b'a', b'/', b'b', b'h', b'i']);
        // 3.4: PUBACK 0x40 0x02 + packet id.
        assert_eq!(bytes(|b| puback(b, 10)), [0x40, 2, 0, 10]);
        // And both decode back.
        let mut b = BytesMut::from(
            &[
                0x32, 9, 0, 3, b'a', b'/', b'b', 0, 10, b'h', b'i', 0x40, 2, 0, 10,
            ][..],
        );
        assert_eq!(
            decode(&mut b).unwrap(),
            Some(Incoming::Publish {
                qos: QoS::AtLeastOnce,
                pkid: 10,
                payload: Bytes::from_static(b"hi")
            })
        );
        assert_eq!(decode(&mut b).unwrap(), Some(Incoming::PubAck(10)));
        assert_eq!(decode(&mut b).unwrap(), None);
    }

    #[test]
    fn remaining_length_uses_the_variable_length_encoding() {
        // 2.2.3, table 2.4: 128 is 0x80 0x01.
        let payload = Bytes::from(vec![b'x'; 128 - 5]);
        let p = bytes(|b| publish(b, "a/b", QoS::AtMostOnce, 0, payload).unwrap());
        assert_eq!(&p[..3], [0x30, 0x80, 0x01]);
        assert_eq!(p.len(), 3 + 128);
        // 16,384 is 0x80 0x80 0x01.
        let payload = Bytes::from(vec![b'x'; 16_384 - 5]);
        let p = bytes(|b| publish(b, "a/b", QoS::AtMostOnce, 0, payload).unwrap());
        assert_eq!(&p[..4], [0x30, 0x80, 0x80, 0x01]);
    }

    #[test]
    fn ping_disconnect_and_partial_input() {
        // 3.12, 3.13, 3.14.
        assert_eq!(bytes(pingreq), [0xC0, 0]);
        assert_eq!(bytes(disconnect), [0xE0, 0]);
        let mut b = BytesMut::from(&[0xD0][..]);
        assert_eq!(decode(&mut b).unwrap(), None, "half a PINGRESP");
        b.extend_from_slice(&[0x00]);
        assert_eq!(decode(&mut b).unwrap(), Some(Incoming::PingResp));
        // A reserved packet type (0) is an error, not a wait for more bytes.
        let mut b = BytesMut::from(&[0x00, 0x00][..]);
        assert!(decode(&mut b).is_err());
    }
}
