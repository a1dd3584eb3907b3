//! Baselines measured inside the bench process: a raw TCP round trip of
//! the miss path's size and a local userfaultfd miss.

use lego_runtime::host::uffd::{UffdMsg, Userfaultfd, UFFD_EVENT_PAGEFAULT};
use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Reads exactly `buf.len()` bytes, polling without blocking (both ends
/// of the baseline poll, as Lego's miss path does).
fn read_polling(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        // Safety: recv writes at most the remaining length into `buf`.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            got += n as usize;
        } else if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        } else {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
            std::hint::spin_loop();
        }
    }
    Ok(())
}

/// Round trips of a 16-byte request and a 4 KiB reply over loopback TCP,
/// in nanoseconds.
pub fn tcp_round_trips(count: usize) -> io::Result<Vec<u64>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut req = [0u8; 16];
        let reply = vec![7u8; 4096];
        loop {
            match read_polling(&mut s, &mut req) {
                Ok(()) => s.write_all(&reply)?,
                Err(_) => return Ok(()),
            }
        }
    });
    let mut client = TcpStream::connect(addr)?;
    client.set_nodelay(true)?;
    let mut reply = vec![0u8; 4096];
    let mut times = Vec::with_capacity(count);
    for i in 0..count + count / 10 {
        let t0 = Instant::now();
        client.write_all(&[1u8; 16])?;
        read_polling(&mut client, &mut reply)?;
        if i >= count / 10 {
            times.push(t0.elapsed().as_nanos() as u64);
        }
    }
    drop(client);
    let _ = server.join();
    Ok(times)
}

/// First touches of pages served by a local userfaultfd handler copying
/// from a buffer in memory, in nanoseconds, end to end.
pub fn local_uffd_misses(pages: usize) -> io::Result<Vec<u64>> {
    let len = pages * 4096;
    // Safety: a fresh private anonymous mapping owned by this function.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let base = base as u64;
    let uffd = Arc::new(Userfaultfd::open()?);
    uffd.register(base, len as u64)?;
    // Safety: fcntl on our own descriptor.
    unsafe {
        let flags = libc::fcntl(uffd.raw(), libc::F_GETFL);
        libc::fcntl(uffd.raw(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    let done = Arc::new(AtomicBool::new(false));
    let handler = {
        let uffd = Arc::clone(&uffd);
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let page = vec![5u8; 4096];
            let mut msgs = [UffdMsg::ZERO; 16];
            while !done.load(Ordering::Relaxed) {
                let n = match uffd.read(&mut msgs) {
                    Ok(n) => n,
                    Err(_) => {
                        std::hint::spin_loop();
                        continue;
                    }
                };
                for m in &msgs[..n] {
                    if m.event == UFFD_EVENT_PAGEFAULT {
                        // Safety: `page` is a 4096-byte buffer.
                        let _ = unsafe {
                            uffd.copy_pages(m.fault_address() & !4095, page.as_ptr(), 1, true)
                        };
                    }
                }
            }
        })
    };
    let mut times = Vec::with_capacity(pages);
    for i in 0..pages {
        let addr = (base + (i * 4096) as u64) as *const u8;
        let t0 = Instant::now();
        // Safety: inside the mapping; the handler installs the page.
        let _ = unsafe { std::ptr::read_volatile(addr) };
        times.push(t0.elapsed().as_nanos() as u64);
    }
    done.store(true, Ordering::Relaxed);
    let _ = handler.join();
    // Safety: unmapping the region this function mapped.
    unsafe { libc::munmap(base as *mut _, len) };
    Ok(times)
}

/// Median and 99th percentile of `samples` (sorted in place).
pub fn median_p99(samples: &mut [u64]) -> (u64, u64) {
    samples.sort_unstable();
    if samples.is_empty() {
        return (0, 0);
    }
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}

/// Round trips of a page request through Lego's own transport (handshake,
/// framing, pipelining client, threaded server), in nanoseconds: the raw
/// TCP round trip plus what the protocol costs.
pub fn transport_round_trips(count: usize) -> io::Result<Vec<u64>> {
    use lego_proto::{Frame, Message, Role};
    use lego_transport::{
        ClientConfig, ClusterSecret, Connection, Identity, PeerInfo, Reply, Server, ServerConfig,
        Service,
    };
    struct Pages(Vec<u8>);
    impl Service for Pages {
        fn handle(&self, _peer: &PeerInfo, _request: Frame) -> Reply {
            Reply {
                message: Message::Page,
                payload: self.0.clone(),
            }
        }
    }
    let secret = ClusterSecret::generate().map_err(io::Error::other)?;
    let server = Server::bind(
        "127.0.0.1:0".parse().expect("literal address"),
        ServerConfig::new(secret.clone(), Identity::new(Role::Memory, "bench")),
        Arc::new(Pages(vec![3u8; 4096])),
    )?;
    let config = ClientConfig::new(secret, Identity::new(Role::Client, "bench"));
    let conn = Connection::open(
        server.local_addr(),
        &config.secret,
        &config.identity,
        config.connect_timeout,
    )
    .map_err(io::Error::other)?;
    let mut times = Vec::with_capacity(count);
    let request = Message::FetchPage {
        pid: 1,
        addr: 0x1000,
    };
    for i in 0..count + count / 10 {
        let t0 = Instant::now();
        conn.call(&request, &[], config.request_timeout)
            .map_err(io::Error::other)?;
        if i >= count / 10 {
            times.push(t0.elapsed().as_nanos() as u64);
        }
    }
    Ok(times)
}
