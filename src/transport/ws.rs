//! The WebSocket server side (RFC 6455): the HTTP upgrade, then one Miop frame
//! per binary message.
