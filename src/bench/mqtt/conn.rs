//! One MQTT client connection as the benchmark drives it: a socket, a read
//! buffer and a write buffer, no task or channel of its own (the connection's
//! benchmark task calls it directly, as it calls the Miop `Client`).
//!
//! [`MqttConn::recv`] is cancel-safe (bytes read stay in the buffer), so the
//! session loop can race it against its ping timer in `select!`.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::packet::{self, ConnectReturnCode, Incoming, QoS, SubscribeReasonCode};

/// Read-buffer growth step: an idle connection holds this much, not a 4 KiB
/// buffer (MQTT control packets are 2-4 bytes, the pushes a few dozen).
const READ_CHUNK: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Protocol(String),
    /// CONNACK with a non-zero return code, or SUBACK with 0x80.
    #[error("refused by the broker: {0}")]
    Refused(String),
    #[error("connection closed by the broker")]
    Closed,
}

pub struct MqttConn {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl MqttConn {
    pub fn new(stream: TcpStream) -> MqttConn {
        // Pings and acks are tiny: do not let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        MqttConn {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
        }
    }

    async fn flush_wbuf(&mut self) -> io::Result<()> {
        let r = self.stream.write_all(&self.wbuf).await;
        self.wbuf.clear();
        r
    }

    /// CONNECT, then waits for CONNACK (the caller bounds the wait).
    pub async fn connect(
        &mut self,
        client_id: &str,
        keep_alive: u16,
        login: Option<(&str, &str)>,
    ) -> Result<(), MqttError> {
        packet::connect(&mut self.wbuf, client_id, keep_alive, login)
            .map_err(MqttError::Protocol)?;
        self.flush_wbuf().await?;
        match self.recv().await? {
            Some(Incoming::ConnAck(ConnectReturnCode::Success)) => Ok(()),
            Some(Incoming::ConnAck(code)) => Err(MqttError::Refused(format!("CONNACK {code:?}"))),
            Some(other) => Err(MqttError::Protocol(format!(
                "expected CONNACK, got {other:?}"
            ))),
            None => Err(MqttError::Closed),
        }
    }

    /// SUBSCRIBE to one topic, then waits for its SUBACK.
    pub async fn subscribe(&mut self, pkid: u16, topic: &str, qos: QoS) -> Result<(), MqttError> {
        packet::subscribe(&mut self.wbuf, pkid, topic, qos).map_err(MqttError::Protocol)?;
        self.flush_wbuf().await?;
        loop {
            match self.recv().await? {
                Some(Incoming::SubAck { pkid: id, codes }) if id == pkid => {
                    return match codes.first() {
                        Some(SubscribeReasonCode::Success(_)) => Ok(()),
                        _ => Err(MqttError::Refused(format!("SUBACK {codes:?} for {topic}"))),
                    }
                }
                // A retained message may race the SUBACK: acknowledge it.
                Some(Incoming::Publish { qos, pkid, .. }) => {
                    if qos != QoS::AtMostOnce {
                        self.puback(pkid).await?;
                    }
                }
                Some(other) => {
                    return Err(MqttError::Protocol(format!(
                        "expected SUBACK, got {other:?}"
                    )))
                }
                None => return Err(MqttError::Closed),
            }
        }
    }

    pub async fn ping(&mut self) -> io::Result<()> {
        packet::pingreq(&mut self.wbuf);
        self.flush_wbuf().await
    }

    pub async fn puback(&mut self, pkid: u16) -> io::Result<()> {
        packet::puback(&mut self.wbuf, pkid);
        self.flush_wbuf().await
    }

    pub async fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        pkid: u16,
        payload: Bytes,
    ) -> Result<(), MqttError> {
        packet::publish(&mut self.wbuf, topic, qos, pkid, payload).map_err(MqttError::Protocol)?;
        Ok(self.flush_wbuf().await?)
    }

    /// The next packet from the broker; `None` when it closed the connection.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<Incoming>, MqttError> {
        loop {
            if let Some(p) = packet::decode(&mut self.rbuf).map_err(MqttError::Protocol)? {
                return Ok(Some(p));
            }
            if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
                self.rbuf.reserve(READ_CHUNK);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// DISCONNECT and close: the broker then drops the session without
    /// publishing a will or logging a timeout.
    pub async fn disconnect(mut self) -> io::Result<()> {
        packet::disconnect(&mut self.wbuf);
        self.flush_wbuf().await?;
        self.stream.shutdown().await
    }
}
