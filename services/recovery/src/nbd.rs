//! A Network Block Device server (newstyle protocol, fixed handshake) that serves image
//! snapshots straight from their repository: instant recovery. The protocol is the one in
//! <https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>: clients such as
//! `qemu-img`, `qemu-nbd` or a hypervisor negotiate with `NBD_OPT_GO` (or the old
//! `NBD_OPT_EXPORT_NAME`) and then send read, write, flush and disconnect requests. Reads are
//! answered with structured replies when the client asks for them (`qemu` does: it needs them
//! for an image whose size is not a multiple of 512) — one data chunk, or one hole chunk when
//! the range is all hole in the snapshot — and with simple replies otherwise.
//!
//! An export is found by its name, which is a secret shown once to whoever asked for it: the
//! server keeps only the names' BLAKE3 hashes, lists none of them (`NBD_OPT_LIST` answers an
//! empty list) and closes the connection of a client asking for an unknown name. Exports are
//! read-only unless made writable; then writes land in a temporary overlay file on this host
//! (4 KiB granularity) and never reach the repository. Stopping an export closes its clients.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use arca_repo::reader::FileReader;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const CLIENT_FLAGS_KNOWN: u32 = 1 | 2;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;

const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = 0x8000_0001;
const REP_ERR_INVALID: u32 = 0x8000_0003;
const REP_ERR_UNKNOWN: u32 = 0x8000_0006;

const REPLY_FLAG_DONE: u16 = 1;
const REPLY_TYPE_OFFSET_DATA: u16 = 1;
const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;

const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

const TFLAG_HAS_FLAGS: u16 = 1;
const TFLAG_READ_ONLY: u16 = 2;
const TFLAG_SEND_FLUSH: u16 = 4;
const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;

const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;
const ENOTSUP: u32 = 95;

/// The largest request we serve (and say so in `NBD_INFO_BLOCK_SIZE`).
const MAX_REQUEST: u32 = 32 << 20;
/// Option data longer than this is refused (names are short).
const MAX_OPTION: u32 = 64 << 10;
/// Requests of one connection worked on at once.
const IN_FLIGHT: usize = 16;
/// The overlay's granularity.
const OVERLAY_BLOCK: u64 = 4096;

/// One export: what it reads, and where its writes go.
struct Export {
    reader: Arc<FileReader>,
    overlay: Option<Overlay>,
    /// Flips to `true` when the export is stopped; its connections close.
    stopped: watch::Receiver<bool>,
}

type Exports = Arc<Mutex<HashMap<[u8; 32], Arc<Export>>>>;

/// A listening NBD server; exports come and go while it runs.
pub struct NbdServer {
    address: SocketAddr,
    exports: Exports,
    accept: tokio::task::JoinHandle<()>,
}

impl NbdServer {
    /// Listens on `address` (port 0 picks a free one).
    pub async fn bind(address: SocketAddr) -> io::Result<NbdServer> {
        let listener = TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let exports = Exports::default();
        let accept = tokio::spawn(accept_loop(listener, exports.clone()));
        Ok(NbdServer { address, exports, accept })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves `reader` to clients that ask for the export name whose BLAKE3 hash is
    /// `name_hash`, until the returned guard is dropped.
    pub fn add(&self, name_hash: [u8; 32], reader: FileReader, writable: bool) -> io::Result<ExportGuard> {
        let overlay = if writable { Some(Overlay::new(reader.size())?) } else { None };
        let (stop, stopped) = watch::channel(false);
        let export = Arc::new(Export { reader: Arc::new(reader), overlay, stopped });
        self.exports.lock().expect("exports lock").insert(name_hash, export);
        Ok(ExportGuard { exports: self.exports.clone(), name_hash, stop })
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Keeps an export served; dropping it removes the export and closes its connections.
pub struct ExportGuard {
    exports: Exports,
    name_hash: [u8; 32],
    stop: watch::Sender<bool>,
}

impl Drop for ExportGuard {
    fn drop(&mut self) {
        self.exports.lock().expect("exports lock").remove(&self.name_hash);
        let _ = self.stop.send(true);
    }
}

/// The hash under which an export name is looked up.
pub fn name_hash(name: &[u8]) -> [u8; 32] {
    *blake3::hash(name).as_bytes()
}

async fn accept_loop(listener: TcpListener, exports: Exports) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let exports = exports.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(stream, &exports).await {
                        tracing::debug!(%peer, error = %e, "NBD connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "NBD accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, exports: &Exports) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut write = BufWriter::new(write);
    let handshake = tokio::time::timeout(std::time::Duration::from_secs(30), negotiate(&mut read, &mut write, exports));
    let Some((export, structured)) =
        handshake.await.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake"))??
    else {
        return Ok(());
    };
    transmission(read, write, export, structured).await
}

fn transmission_flags(export: &Export) -> u16 {
    let mut flags = TFLAG_HAS_FLAGS | TFLAG_CAN_MULTI_CONN;
    if export.overlay.is_some() {
        flags |= TFLAG_SEND_FLUSH;
    } else {
        flags |= TFLAG_READ_ONLY;
    }
    flags
}

/// The fixed newstyle handshake and option haggling; the export chosen and whether reads get
/// structured replies, or `None` when the client went away (or asked for a name we do not
/// serve, which closes the connection).
async fn negotiate<R, W>(read: &mut R, write: &mut W, exports: &Exports) -> io::Result<Option<(Arc<Export>, bool)>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    write.write_u64(NBDMAGIC).await?;
    write.write_u64(IHAVEOPT).await?;
    write.write_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).await?;
    write.flush().await?;
    let client_flags = read.read_u32().await?;
    if client_flags & !CLIENT_FLAGS_KNOWN != 0 || client_flags & u32::from(FLAG_FIXED_NEWSTYLE) == 0 {
        return Ok(None);
    }
    let no_zeroes = client_flags & u32::from(FLAG_NO_ZEROES) != 0;
    let mut structured = false;
    let find = |name: &[u8]| exports.lock().expect("exports lock").get(&name_hash(name)).cloned();
    loop {
        if read.read_u64().await? != IHAVEOPT {
            return Ok(None);
        }
        let option = read.read_u32().await?;
        let length = read.read_u32().await?;
        if length > MAX_OPTION {
            return Ok(None);
        }
        let mut data = vec![0u8; length as usize];
        read.read_exact(&mut data).await?;
        match option {
            OPT_EXPORT_NAME => {
                // No way to say "unknown" here but to hang up.
                let Some(export) = find(&data) else { return Ok(None) };
                write.write_u64(export.reader.size()).await?;
                write.write_u16(transmission_flags(&export)).await?;
                if !no_zeroes {
                    write.write_all(&[0u8; 124]).await?;
                }
                write.flush().await?;
                return Ok(Some((export, structured)));
            }
            OPT_ABORT => {
                option_reply(write, option, REP_ACK, &[]).await?;
                return Ok(None);
            }
            // The names are secrets: the list is always empty.
            OPT_LIST => option_reply(write, option, REP_ACK, &[]).await?,
            OPT_STRUCTURED_REPLY if data.is_empty() => {
                structured = true;
                option_reply(write, option, REP_ACK, &[]).await?;
            }
            OPT_STRUCTURED_REPLY => option_reply(write, option, REP_ERR_INVALID, b"takes no data").await?,
            OPT_INFO | OPT_GO => {
                let Some((name, requests)) = parse_info_request(&data) else {
                    option_reply(write, option, REP_ERR_INVALID, b"malformed request").await?;
                    continue;
                };
                let Some(export) = find(name) else {
                    option_reply(write, option, REP_ERR_UNKNOWN, b"no such export").await?;
                    continue;
                };
                let mut info = Vec::with_capacity(12);
                info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                info.extend_from_slice(&export.reader.size().to_be_bytes());
                info.extend_from_slice(&transmission_flags(&export).to_be_bytes());
                option_reply(write, option, REP_INFO, &info).await?;
                if requests.contains(&INFO_BLOCK_SIZE) {
                    let mut sizes = Vec::with_capacity(14);
                    sizes.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                    for size in [1u32, OVERLAY_BLOCK as u32, MAX_REQUEST] {
                        sizes.extend_from_slice(&size.to_be_bytes());
                    }
                    option_reply(write, option, REP_INFO, &sizes).await?;
                }
                option_reply(write, option, REP_ACK, &[]).await?;
                if option == OPT_GO {
                    return Ok(Some((export, structured)));
                }
            }
            // STARTTLS, meta contexts, extended headers, …
            _ => option_reply(write, option, REP_ERR_UNSUP, &[]).await?,
        }
    }
}

/// `NBD_OPT_INFO`/`NBD_OPT_GO` data: the name and the information types asked for.
fn parse_info_request(data: &[u8]) -> Option<(&[u8], Vec<u16>)> {
    let name_length = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let name = data.get(4..4 + name_length)?;
    let rest = &data[4 + name_length..];
    let count = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let requests = rest.get(2..2 + 2 * count)?;
    Some((name, requests.chunks_exact(2).map(|r| u16::from_be_bytes([r[0], r[1]])).collect()))
}

async fn option_reply<W: AsyncWrite + Unpin>(write: &mut W, option: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    write.write_u64(REPLY_MAGIC).await?;
    write.write_u32(option).await?;
    write.write_u32(kind).await?;
    write.write_u32(data.len() as u32).await?;
    write.write_all(data).await?;
    write.flush().await
}

/// Serves requests until the client disconnects or the export stops. Reads and writes run
/// on the blocking pool, up to [`IN_FLIGHT`] at once; their replies may come back in any
/// order (the client matches them by handle).
async fn transmission<R, W>(mut read: R, write: W, export: Arc<Export>, structured: bool) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (replies, mut outgoing) = mpsc::channel::<Vec<u8>>(IN_FLIGHT);
    let writer = tokio::spawn(async move {
        let mut write = write;
        while let Some(reply) = outgoing.recv().await {
            write.write_all(&reply).await?;
            if outgoing.is_empty() {
                write.flush().await?;
            }
        }
        write.flush().await?;
        io::Result::Ok(())
    });
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut stopped = export.stopped.clone();
    loop {
        let header = tokio::select! {
            header = read_request(&mut read) => header?,
            _ = stopped.wait_for(|s| *s) => break,
        };
        let Some(request) = header else { break };
        let permit = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        match request.command {
            CMD_DISC => break,
            CMD_READ => {
                let export = export.clone();
                let replies = replies.clone();
                tokio::spawn(async move {
                    let reply = tokio::task::spawn_blocking(move || read_reply(&export, &request, structured))
                        .await
                        .unwrap_or_else(|_| error_reply(request.handle, EIO, structured));
                    let _ = replies.send(reply).await;
                    drop(permit);
                });
            }
            CMD_WRITE => {
                // The payload follows the header whatever we answer.
                let mut data = vec![0u8; request.length as usize];
                read.read_exact(&mut data).await?;
                let export = export.clone();
                let replies = replies.clone();
                tokio::spawn(async move {
                    let error = tokio::task::spawn_blocking(move || write_request(&export, &request, &data))
                        .await
                        .unwrap_or(EIO);
                    let _ = replies.send(simple_reply(request.handle, error, 0)).await;
                    drop(permit);
                });
            }
            CMD_FLUSH => {
                // The overlay is scratch space that dies with the export: nothing to make durable.
                let error = if export.overlay.is_some() { 0 } else { EINVAL };
                replies.send(simple_reply(request.handle, error, 0)).await.ok();
            }
            _ => {
                replies.send(simple_reply(request.handle, ENOTSUP, 0)).await.ok();
            }
        }
    }
    // Let the requests in flight answer, then close.
    let _ = slots.acquire_many(IN_FLIGHT as u32).await;
    drop(replies);
    writer.await.map_err(io::Error::other)?
}

#[derive(Clone, Copy, Debug)]
struct Request {
    command: u16,
    handle: u64,
    offset: u64,
    length: u32,
}

/// The next request header; `None` at a clean end of stream.
async fn read_request<R: AsyncRead + Unpin>(read: &mut R) -> io::Result<Option<Request>> {
    let mut header = [0u8; 28];
    match read.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let u32_at = |at: usize| u32::from_be_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_be_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    if u32_at(0) != REQUEST_MAGIC {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad request magic"));
    }
    let command = u16::from_be_bytes([header[6], header[7]]);
    let request = Request { command, handle: u64_at(8), offset: u64_at(16), length: u32_at(24) };
    if command == CMD_WRITE && request.length > MAX_REQUEST {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "write larger than the maximum request"));
    }
    Ok(Some(request))
}

/// A simple reply header followed by room for `data_length` bytes of data.
fn simple_reply(handle: u64, error: u32, data_length: usize) -> Vec<u8> {
    let mut reply = Vec::with_capacity(16 + data_length);
    reply.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    reply.extend_from_slice(&error.to_be_bytes());
    reply.extend_from_slice(&handle.to_be_bytes());
    reply
}

fn in_bounds(export: &Export, request: &Request) -> bool {
    request.length <= MAX_REQUEST
        && request.offset.checked_add(u64::from(request.length)).is_some_and(|end| end <= export.reader.size())
}

/// The header of one structured reply chunk (the last of its request) of `length` bytes.
fn chunk_header(handle: u64, kind: u16, length: usize) -> Vec<u8> {
    let mut reply = Vec::with_capacity(20 + length);
    reply.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    reply.extend_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
    reply.extend_from_slice(&kind.to_be_bytes());
    reply.extend_from_slice(&handle.to_be_bytes());
    reply.extend_from_slice(&(length as u32).to_be_bytes());
    reply
}

/// An error answer to a read, in the form the connection negotiated.
fn error_reply(handle: u64, error: u32, structured: bool) -> Vec<u8> {
    if !structured {
        return simple_reply(handle, error, 0);
    }
    let mut reply = chunk_header(handle, REPLY_TYPE_ERROR, 6);
    reply.extend_from_slice(&error.to_be_bytes());
    reply.extend_from_slice(&0u16.to_be_bytes());
    reply
}

fn read_reply(export: &Export, request: &Request, structured: bool) -> Vec<u8> {
    if !in_bounds(export, request) {
        return error_reply(request.handle, EINVAL, structured);
    }
    let length = request.length as usize;
    if structured && export.overlay.is_none() && export.reader.is_hole(request.offset, u64::from(request.length)) {
        let mut reply = chunk_header(request.handle, REPLY_TYPE_OFFSET_HOLE, 12);
        reply.extend_from_slice(&request.offset.to_be_bytes());
        reply.extend_from_slice(&request.length.to_be_bytes());
        return reply;
    }
    let mut reply = if structured {
        let mut reply = chunk_header(request.handle, REPLY_TYPE_OFFSET_DATA, 8 + length);
        reply.extend_from_slice(&request.offset.to_be_bytes());
        reply
    } else {
        simple_reply(request.handle, 0, length)
    };
    let start = reply.len();
    reply.resize(start + length, 0);
    let result = match &export.overlay {
        Some(overlay) => overlay.read(&export.reader, request.offset, &mut reply[start..]),
        None => export.reader.read_at(request.offset, &mut reply[start..]).map_err(io::Error::other).map(|_| ()),
    };
    match result {
        Ok(()) => reply,
        Err(e) => {
            tracing::warn!(offset = request.offset, length, error = %e, "NBD read failed");
            error_reply(request.handle, EIO, structured)
        }
    }
}

fn write_request(export: &Export, request: &Request, data: &[u8]) -> u32 {
    let Some(overlay) = &export.overlay else { return EPERM };
    if !in_bounds(export, request) {
        return EINVAL;
    }
    match overlay.write(&export.reader, request.offset, data) {
        Ok(()) => 0,
        Err(e) => {
            tracing::warn!(offset = request.offset, error = %e, "NBD write to the overlay failed");
            EIO
        }
    }
}

/// Where a writable export's writes go: a sparse temporary file the size of the image, and
/// which 4 KiB blocks of it hold written data (the rest reads from the snapshot).
struct Overlay {
    file: std::fs::File,
    written: Mutex<Vec<u64>>,
}

impl Overlay {
    fn new(size: u64) -> io::Result<Overlay> {
        let file = tempfile::tempfile()?;
        file.set_len(size)?;
        let blocks = size.div_ceil(OVERLAY_BLOCK);
        Ok(Overlay { file, written: Mutex::new(vec![0; blocks.div_ceil(64) as usize]) })
    }

    fn is_written(bits: &[u64], block: u64) -> bool {
        bits[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    fn read(&self, base: &FileReader, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        base.read_at(offset, buf).map_err(io::Error::other)?;
        let end = offset + buf.len() as u64;
        let bits = self.written.lock().expect("overlay lock");
        for block in offset / OVERLAY_BLOCK..end.div_ceil(OVERLAY_BLOCK) {
            if Self::is_written(&bits, block) {
                let from = (block * OVERLAY_BLOCK).max(offset);
                let to = ((block + 1) * OVERLAY_BLOCK).min(end);
                self.file.read_exact_at(&mut buf[(from - offset) as usize..(to - offset) as usize], from)?;
            }
        }
        Ok(())
    }

    /// Writes `data` at `offset`; blocks it covers only in part are first filled from the
    /// snapshot, so every written block holds whole, current content.
    fn write(&self, base: &FileReader, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset + data.len() as u64;
        let mut bits = self.written.lock().expect("overlay lock");
        for block in [offset / OVERLAY_BLOCK, end.saturating_sub(1) / OVERLAY_BLOCK] {
            let start = block * OVERLAY_BLOCK;
            let covered = offset <= start && end >= start + OVERLAY_BLOCK;
            if !covered && !Self::is_written(&bits, block) {
                let mut whole = vec![0u8; (OVERLAY_BLOCK.min(base.size() - start)) as usize];
                base.read_at(start, &mut whole).map_err(io::Error::other)?;
                self.file.write_all_at(&whole, start)?;
                bits[(block / 64) as usize] |= 1 << (block % 64);
            }
        }
        self.file.write_all_at(data, offset)?;
        for block in offset / OVERLAY_BLOCK..end.div_ceil(OVERLAY_BLOCK) {
            bits[(block / 64) as usize] |= 1 << (block % 64);
        }
        Ok(())
    }
}
