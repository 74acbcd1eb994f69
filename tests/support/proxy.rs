//! A fault-injecting TCP proxy inside the test process, placed on the link
//! from one cluster node to another (node i's `--peers` entry for node j
//! points at the proxy, which forwards to j's real address).
//!
//! A link passes bytes both ways until it is cut. While cut it behaves like
//! a network that drops every packet: bytes already in flight and bytes
//! sent later are read and thrown away, nothing reaches the other side, and
//! new connections are accepted but go nowhere. No RST, no FIN: the nodes
//! find out only through their own timeouts and keepalives. When the link
//! heals, every connection that lost bytes is closed (its HTTP/2 framing is
//! broken) and new connections pass again, so the nodes reconnect cleanly.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One directed link `from -> to` through a proxy listening on [`Link::addr`].
pub struct Link {
    /// Node whose `--peers` entry points at this proxy.
    pub from: u32,
    /// Node the proxy forwards to.
    pub to: u32,
    addr: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
    accept_task: JoinHandle<()>,
}

impl Link {
    /// Binds a proxy on 127.0.0.1 (a free port) forwarding to `target`.
    /// Must be called inside a Tokio runtime (the test's).
    pub async fn start(from: u32, to: u32, target: SocketAddr) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("cannot bind a proxy port: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy local_addr: {e}"));
        let (cut, _) = watch::channel(false);
        let cut = Arc::new(cut);
        let state = cut.clone();
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                inbound.set_nodelay(true).ok();
                tokio::spawn(serve(inbound, target, state.subscribe()));
            }
        });
        Link {
            from,
            to,
            addr,
            cut,
            accept_task,
        }
    }

    /// Where the proxy listens (what `from` is told `to` lives at).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every byte on this link from now on.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Lets bytes pass again; connections that lost bytes are closed.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    /// Whether the link is cut.
    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.accept_task.abort();
        // Connections end on their own: heal closes poisoned ones, and the
        // nodes are killed with the cluster.
        self.cut.send_replace(false);
    }
}

/// One proxied connection: forwards both ways while the link passes.
async fn serve(inbound: TcpStream, target: SocketAddr, mut state: watch::Receiver<bool>) {
    if *state.borrow_and_update() {
        // Accepted during a cut: swallow everything until healed, then close.
        blackhole(inbound, state).await;
        return;
    }
    let Ok(outbound) = TcpStream::connect(target).await else {
        // The target is down: the peer sees its connection close, as if
        // refused a moment late.
        return;
    };
    outbound.set_nodelay(true).ok();
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    let up = pump(&mut in_read, &mut out_write, state.clone());
    let down = pump(&mut out_read, &mut in_write, state.clone());
    // Either direction ending (EOF, error, or poisoned by a cut and then
    // healed) ends the connection: both sockets close when dropped here.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

/// Copies `from` to `to` while the link passes; while it is cut, reads and
/// drops. Returns at EOF or error, or when the link heals after bytes were
/// dropped (the stream is corrupt then).
async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut poisoned = false;
    loop {
        let cut = *state.borrow_and_update();
        if cut {
            poisoned = true;
        } else if poisoned {
            return;
        }
        tokio::select! {
            read = from.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if *state.borrow() {
                    poisoned = true;
                    continue;
                }
                if poisoned || to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads and drops everything until the link heals, then closes.
async fn blackhole(mut conn: TcpStream, mut state: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !*state.borrow_and_update() {
            return;
        }
        tokio::select! {
            read = conn.read(&mut buf) => {
                if matches!(read, Ok(0) | Err(_)) {
                    return;
                }
            }
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}
