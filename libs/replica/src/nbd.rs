//! A small NBD client (fixed newstyle handshake, structured replies) for what changed-block
//! tracking needs from qemu: the dirty extents of a bitmap through `NBD_CMD_BLOCK_STATUS` on
//! the meta context `qemu:dirty-bitmap:<name>`, and writes (benchmarks and tests stand in for
//! a guest with them).

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;

const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_SET_META_CONTEXT: u32 = 10;

const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const REP_FLAG_ERROR: u32 = 1 << 31;

const INFO_EXPORT: u16 = 0;

const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_BLOCK_STATUS: u16 = 7;

const REPLY_FLAG_DONE: u16 = 1;
const REPLY_TYPE_NONE: u16 = 0;
const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
const REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;

/// For a `qemu:dirty-bitmap:` context, an extent whose bit 0 is set changed.
const STATE_DIRTY: u32 = 1;

/// The longest the server may take to answer.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The most one block status request asks about (the length is 32 bits).
const STATUS_SPAN: u64 = 1 << 31;

fn protocol(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("NBD: {}", message.into()))
}

/// A connection to one export.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: BufWriter<UnixStream>,
    size: u64,
    /// The id the server gave the meta context asked for.
    context: Option<u32>,
    cookie: u64,
}

impl Client {
    /// Connects to `export` on the server listening at `socket`; with `context`, asks for that
    /// meta context (which the server must know).
    pub fn connect(socket: &Path, export: &str, context: Option<&str>) -> io::Result<Client> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        let mut client = Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: BufWriter::new(stream),
            size: 0,
            context: None,
            cookie: 0,
        };
        client.handshake(export, context)?;
        Ok(client)
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn handshake(&mut self, export: &str, context: Option<&str>) -> io::Result<()> {
        if self.u64()? != NBDMAGIC || self.u64()? != IHAVEOPT {
            return Err(protocol("not a newstyle NBD server"));
        }
        let flags = self.u16()?;
        if flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(protocol("the server does not speak the fixed newstyle handshake"));
        }
        let no_zeroes = flags & FLAG_NO_ZEROES != 0;
        let ours = u32::from(FLAG_FIXED_NEWSTYLE) | if no_zeroes { u32::from(FLAG_NO_ZEROES) } else { 0 };
        self.writer.write_all(&ours.to_be_bytes())?;

        self.option(OPT_STRUCTURED_REPLY, &[])?;
        self.expect_ack(OPT_STRUCTURED_REPLY)?;

        if let Some(context) = context {
            let mut data = Vec::new();
            put_string(&mut data, export);
            data.extend_from_slice(&1u32.to_be_bytes());
            put_string(&mut data, context);
            self.option(OPT_SET_META_CONTEXT, &data)?;
            loop {
                let (kind, payload) = self.option_reply(OPT_SET_META_CONTEXT)?;
                match kind {
                    REP_META_CONTEXT if payload.len() >= 4 => {
                        self.context = Some(u32::from_be_bytes(payload[..4].try_into().expect("4 bytes")));
                    }
                    REP_ACK => break,
                    _ => return Err(protocol(format!("unexpected reply {kind:#x} to a meta context"))),
                }
            }
            if self.context.is_none() {
                return Err(protocol(format!("the server does not know the context {context}")));
            }
        }

        let mut data = Vec::new();
        put_string(&mut data, export);
        data.extend_from_slice(&0u16.to_be_bytes());
        self.option(OPT_GO, &data)?;
        let mut sized = false;
        loop {
            let (kind, payload) = self.option_reply(OPT_GO)?;
            match kind {
                REP_INFO if payload.len() >= 12 && u16::from_be_bytes([payload[0], payload[1]]) == INFO_EXPORT => {
                    self.size = u64::from_be_bytes(payload[2..10].try_into().expect("8 bytes"));
                    sized = true;
                }
                REP_INFO => {}
                // The spec makes the export's size part of every successful NBD_OPT_GO.
                REP_ACK if sized => return Ok(()),
                REP_ACK => return Err(protocol("the server did not tell the export's size")),
                _ => return Err(protocol(format!("unexpected reply {kind:#x} to opening the export"))),
            }
        }
    }

    fn option(&mut self, option: u32, data: &[u8]) -> io::Result<()> {
        self.writer.write_all(&IHAVEOPT.to_be_bytes())?;
        self.writer.write_all(&option.to_be_bytes())?;
        self.writer.write_all(&u32::try_from(data.len()).map_err(|_| protocol("option too long"))?.to_be_bytes())?;
        self.writer.write_all(data)?;
        self.writer.flush()
    }

    /// One reply to `option`: its type and data; an error reply is an error.
    fn option_reply(&mut self, option: u32) -> io::Result<(u32, Vec<u8>)> {
        if self.u64()? != OPTION_REPLY_MAGIC {
            return Err(protocol("bad option reply magic"));
        }
        if self.u32()? != option {
            return Err(protocol("a reply to another option"));
        }
        let kind = self.u32()?;
        let length = self.u32()?;
        if length > 64 << 10 {
            return Err(protocol("option reply too long"));
        }
        let mut payload = vec![0; length as usize];
        self.reader.read_exact(&mut payload)?;
        if kind & REP_FLAG_ERROR != 0 {
            return Err(protocol(format!(
                "the server refused option {option}: {} ({kind:#x})",
                String::from_utf8_lossy(&payload)
            )));
        }
        Ok((kind, payload))
    }

    fn expect_ack(&mut self, option: u32) -> io::Result<()> {
        match self.option_reply(option)? {
            (REP_ACK, _) => Ok(()),
            (kind, _) => Err(protocol(format!("unexpected reply {kind:#x} to option {option}"))),
        }
    }

    fn request(&mut self, command: u16, offset: u64, length: u32, data: &[u8]) -> io::Result<u64> {
        self.cookie += 1;
        self.writer.write_all(&REQUEST_MAGIC.to_be_bytes())?;
        self.writer.write_all(&0u16.to_be_bytes())?;
        self.writer.write_all(&command.to_be_bytes())?;
        self.writer.write_all(&self.cookie.to_be_bytes())?;
        self.writer.write_all(&offset.to_be_bytes())?;
        self.writer.write_all(&length.to_be_bytes())?;
        self.writer.write_all(data)?;
        self.writer.flush()?;
        Ok(self.cookie)
    }

    /// Reads replies to `cookie` until the last one, handing each structured chunk (type and
    /// payload) to `chunk`. An error chunk fails the request once its last chunk is read, so
    /// the connection stays in step.
    fn replies(&mut self, cookie: u64, mut chunk: impl FnMut(u16, &[u8]) -> io::Result<()>) -> io::Result<()> {
        let mut failed = None;
        loop {
            match self.u32()? {
                SIMPLE_REPLY_MAGIC => {
                    let error = self.u32()?;
                    self.expect_cookie(cookie)?;
                    return if error == 0 {
                        Ok(())
                    } else {
                        Err(protocol(format!("the server failed: errno {error}")))
                    };
                }
                STRUCTURED_REPLY_MAGIC => {
                    let flags = self.u16()?;
                    let kind = self.u16()?;
                    self.expect_cookie(cookie)?;
                    let length = self.u32()?;
                    if length > 64 << 20 {
                        return Err(protocol("reply chunk too long"));
                    }
                    let mut payload = vec![0; length as usize];
                    self.reader.read_exact(&mut payload)?;
                    if kind & REPLY_TYPE_ERROR_BIT != 0 {
                        let error = payload.get(..4).map_or(0, |e| u32::from_be_bytes(e.try_into().expect("4 bytes")));
                        let length = payload.get(4..6).map_or(0, |l| usize::from(u16::from_be_bytes([l[0], l[1]])));
                        let message = payload.get(6..6 + length).map(String::from_utf8_lossy).unwrap_or_default();
                        failed.get_or_insert_with(|| protocol(format!("the server failed: errno {error} {message}")));
                    } else if kind != REPLY_TYPE_NONE && failed.is_none() {
                        chunk(kind, &payload)?;
                    }
                    if flags & REPLY_FLAG_DONE != 0 {
                        return failed.map_or(Ok(()), Err);
                    }
                }
                _ => return Err(protocol("bad reply magic")),
            }
        }
    }

    fn expect_cookie(&mut self, cookie: u64) -> io::Result<()> {
        if self.u64()? == cookie { Ok(()) } else { Err(protocol("a reply to another request")) }
    }

    /// The ranges `(offset, length)` the connection's meta context marks dirty, merged and in
    /// order, over the whole export.
    pub fn dirty_extents(&mut self) -> io::Result<Vec<(u64, u64)>> {
        let context = self.context.ok_or_else(|| protocol("no meta context was negotiated"))?;
        let mut dirty: Vec<(u64, u64)> = Vec::new();
        let mut offset = 0;
        while offset < self.size {
            let length = (self.size - offset).min(STATUS_SPAN) as u32;
            let cookie = self.request(CMD_BLOCK_STATUS, offset, length, &[])?;
            let mut covered = 0u64;
            self.replies(cookie, |kind, payload| {
                if kind != REPLY_TYPE_BLOCK_STATUS || payload.len() < 4 {
                    return Err(protocol(format!("unexpected reply chunk {kind} to a block status")));
                }
                if u32::from_be_bytes(payload[..4].try_into().expect("4 bytes")) != context {
                    return Ok(());
                }
                for extent in payload[4..].chunks_exact(8) {
                    let length = u64::from(u32::from_be_bytes(extent[..4].try_into().expect("4 bytes")));
                    let state = u32::from_be_bytes(extent[4..].try_into().expect("4 bytes"));
                    let start = offset + covered;
                    if state & STATE_DIRTY != 0 {
                        match dirty.last_mut() {
                            Some((at, len)) if *at + *len == start => *len += length,
                            _ => dirty.push((start, length)),
                        }
                    }
                    covered += length;
                }
                Ok(())
            })?;
            if covered == 0 {
                return Err(protocol("a block status that covers nothing"));
            }
            offset += covered;
        }
        Ok(dirty)
    }

    /// Writes `data` at `offset`.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let length = u32::try_from(data.len()).map_err(|_| protocol("write too long"))?;
        let cookie = self.request(CMD_WRITE, offset, length, data)?;
        self.replies(cookie, |_, _| Ok(()))
    }

    /// Makes the writes so far durable.
    pub fn flush(&mut self) -> io::Result<()> {
        let cookie = self.request(CMD_FLUSH, 0, 0, &[])?;
        self.replies(cookie, |_, _| Ok(()))
    }

    fn u16(&mut self) -> io::Result<u16> {
        let mut bytes = [0; 2];
        self.reader.read_exact(&mut bytes)?;
        Ok(u16::from_be_bytes(bytes))
    }

    fn u32(&mut self) -> io::Result<u32> {
        let mut bytes = [0; 4];
        self.reader.read_exact(&mut bytes)?;
        Ok(u32::from_be_bytes(bytes))
    }

    fn u64(&mut self) -> io::Result<u64> {
        let mut bytes = [0; 8];
        self.reader.read_exact(&mut bytes)?;
        Ok(u64::from_be_bytes(bytes))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.request(CMD_DISC, 0, 0, &[]);
    }
}

fn put_string(data: &mut Vec<u8>, value: &str) {
    data.extend_from_slice(&(value.len() as u32).to_be_bytes());
    data.extend_from_slice(value.as_bytes());
}
