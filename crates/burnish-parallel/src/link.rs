//! Sums between nodes (processes) over TCP: node 0 is the hub, every other node connects to
//! it. burn-collective 0.21's own multi-node path (WebSocket orchestrator, ring, tree or
//! centralized) hangs on the second all-reduce of a group (docs/crates/burnish-parallel.md),
//! so the nodes exchange their local sums here, while the threads of a node still sum
//! through burn-collective.
//!
//! Wire format, little-endian: a node opens with `BURNISH\x01`, its node rank, the number
//! of nodes and its workers (u32 each); the hub answers a status byte (0 ok) and a message
//! (u32 length, UTF-8). A sum is a frame `u64 n, n × f32` each way; the hub adds the frames
//! in node order, so every node gets the same bits.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use burnish_grad::SyncError;

use crate::launch::Abort;
use crate::topology::Topology;

const MAGIC: &[u8; 8] = b"BURNISH\x01";

/// How often a node waiting to connect or to be connected looks at the clock and the
/// [`Abort`] signal.
const POLL: Duration = Duration::from_millis(20);

/// This node's connections to the others.
#[derive(Debug)]
pub(crate) enum NodeLink {
    /// Node 0: one stream per other node, in node order.
    Hub(Vec<TcpStream>),
    /// Another node: its stream to the hub.
    Spoke(TcpStream),
}

impl NodeLink {
    /// Connects this node to the others (node 0 waits for all of them).
    pub(crate) fn connect(
        topology: &Topology,
        rank: usize,
        abort: &Abort,
    ) -> Result<Self, SyncError> {
        let coordinator = topology.coordinator.as_deref().unwrap_or_default();
        let deadline = Instant::now() + topology.timeout;
        let fail = |message: String| SyncError::Engine { rank, message };
        let waited = || {
            let failed = abort.failed().filter(|&f| f != rank);
            match failed {
                Some(failed) => Err(SyncError::Aborted { rank, failed }),
                None if Instant::now() >= deadline => Err(SyncError::Timeout {
                    rank,
                    seconds: topology.timeout.as_secs(),
                }),
                None => {
                    std::thread::sleep(POLL);
                    Ok(())
                }
            }
        };
        if topology.node_rank == 0 {
            let port = topology
                .coordinator_port()
                .ok()
                .flatten()
                .ok_or_else(|| fail(format!("`{coordinator}` is not host:port")))?;
            let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| {
                fail(format!(
                    "cannot listen on port {port} for the other nodes: {e}"
                ))
            })?;
            listener
                .set_nonblocking(true)
                .map_err(|e| fail(e.to_string()))?;
            let mut nodes: Vec<Option<TcpStream>> = (1..topology.nodes).map(|_| None).collect();
            while nodes.iter().any(Option::is_none) {
                match listener.accept() {
                    Ok((mut stream, peer)) => {
                        stream
                            .set_nonblocking(false)
                            .map_err(|e| fail(e.to_string()))?;
                        set_timeouts(&stream, topology.timeout).map_err(|e| fail(e.to_string()))?;
                        let (node, nodes_there, workers) = read_hello(&mut stream)
                            .map_err(|e| fail(format!("{peer} is not a burnish node: {e}")))?;
                        let refusal = if nodes_there != topology.nodes {
                            Some(format!(
                                "node {node} was started for {nodes_there} nodes, node 0 for {}",
                                topology.nodes
                            ))
                        } else if workers != topology.workers_per_node {
                            Some(format!(
                                "node {node} has {workers} devices, node 0 has {}: every node needs the same number",
                                topology.workers_per_node
                            ))
                        } else if node == 0 || node >= topology.nodes || nodes[node - 1].is_some() {
                            Some(format!("node rank {node} is taken or out of range"))
                        } else {
                            None
                        };
                        if let Some(message) = refusal {
                            let _ = answer(&mut stream, Err(&message));
                            return Err(fail(message));
                        }
                        nodes[node - 1] = Some(stream);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => waited()?,
                    Err(e) => return Err(fail(format!("accepting a node failed: {e}"))),
                }
            }
            let mut streams: Vec<TcpStream> = nodes.into_iter().flatten().collect();
            for stream in &mut streams {
                answer(stream, Ok(()))
                    .map_err(|e| fail(format!("answering a node failed: {e}")))?;
            }
            return Ok(NodeLink::Hub(streams));
        }
        let address = coordinator
            .to_socket_addrs()
            .map_err(|e| fail(format!("coordinator `{coordinator}`: {e}")))?
            .next()
            .ok_or_else(|| fail(format!("coordinator `{coordinator}` has no address")))?;
        let mut stream = loop {
            // Node 0 may start later: try until the deadline.
            match TcpStream::connect_timeout(&address, Duration::from_secs(1)) {
                Ok(stream) => break stream,
                Err(_) => waited()?,
            }
        };
        set_timeouts(&stream, topology.timeout).map_err(|e| fail(e.to_string()))?;
        let hello = [
            MAGIC.as_slice(),
            &(topology.node_rank as u32).to_le_bytes(),
            &(topology.nodes as u32).to_le_bytes(),
            &(topology.workers_per_node as u32).to_le_bytes(),
        ]
        .concat();
        stream
            .write_all(&hello)
            .map_err(|e| fail(format!("node 0 at {coordinator}: {e}")))?;
        let mut status = [0u8; 1];
        stream
            .read_exact(&mut status)
            .map_err(|e| io_error(rank, 0, e, topology.timeout))?;
        let message = read_text(&mut stream).map_err(|e| io_error(rank, 0, e, topology.timeout))?;
        if status[0] != 0 {
            return Err(fail(format!("node 0 refused this node: {message}")));
        }
        Ok(NodeLink::Spoke(stream))
    }

    /// Sums `values` over all nodes; every node gets the hub's bits.
    pub(crate) fn all_reduce(
        &mut self,
        rank: usize,
        values: Vec<f32>,
        timeout: Duration,
    ) -> Result<Vec<f32>, SyncError> {
        match self {
            NodeLink::Spoke(stream) => {
                write_frame(stream, &values).map_err(|e| io_error(rank, 0, e, timeout))?;
                let sum = read_frame(stream).map_err(|e| io_error(rank, 0, e, timeout))?;
                if sum.len() != values.len() {
                    return Err(SyncError::Engine {
                        rank,
                        message: format!("node 0 sent {} values for {}", sum.len(), values.len()),
                    });
                }
                Ok(sum)
            }
            NodeLink::Hub(streams) => {
                let mut sum = values;
                for (index, stream) in streams.iter_mut().enumerate() {
                    let theirs =
                        read_frame(stream).map_err(|e| io_error(rank, index + 1, e, timeout))?;
                    if theirs.len() != sum.len() {
                        return Err(SyncError::Engine {
                            rank,
                            message: format!(
                                "node {} sent {} values for {}: the nodes run different models",
                                index + 1,
                                theirs.len(),
                                sum.len()
                            ),
                        });
                    }
                    for (s, t) in sum.iter_mut().zip(theirs) {
                        *s += t;
                    }
                }
                for (index, stream) in streams.iter_mut().enumerate() {
                    write_frame(stream, &sum).map_err(|e| io_error(rank, index + 1, e, timeout))?;
                }
                Ok(sum)
            }
        }
    }
}

fn set_timeouts(stream: &TcpStream, timeout: Duration) -> std::io::Result<()> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)
}

/// A failed read or write with node `node`: a timeout, or the node gone.
fn io_error(rank: usize, node: usize, e: std::io::Error, timeout: Duration) -> SyncError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => SyncError::Timeout {
            rank,
            seconds: timeout.as_secs(),
        },
        _ => SyncError::Engine {
            rank,
            message: format!(
                "the connection with node {node} broke ({e}): it stopped or was killed; \
                 --resume continues the run from its last checkpoint"
            ),
        },
    }
}

fn read_hello(stream: &mut TcpStream) -> std::io::Result<(usize, usize, usize)> {
    let mut hello = [0u8; 20];
    stream.read_exact(&mut hello)?;
    if &hello[..8] != MAGIC {
        return Err(std::io::Error::other("wrong greeting"));
    }
    let word = |i: usize| {
        u32::from_le_bytes([hello[i], hello[i + 1], hello[i + 2], hello[i + 3]]) as usize
    };
    Ok((word(8), word(12), word(16)))
}

fn answer(stream: &mut TcpStream, result: Result<(), &str>) -> std::io::Result<()> {
    let (status, text) = match result {
        Ok(()) => (0u8, ""),
        Err(message) => (1u8, message),
    };
    let bytes = [
        &[status][..],
        &(text.len() as u32).to_le_bytes(),
        text.as_bytes(),
    ]
    .concat();
    stream.write_all(&bytes)
}

fn read_text(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let mut text = vec![0u8; u32::from_le_bytes(len) as usize];
    stream.read_exact(&mut text)?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

fn write_frame(stream: &mut TcpStream, values: &[f32]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(8 + 4 * values.len());
    bytes.extend_from_slice(&(values.len() as u64).to_le_bytes());
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    stream.write_all(&bytes)
}

fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<f32>> {
    let mut len = [0u8; 8];
    stream.read_exact(&mut len)?;
    let len = usize::try_from(u64::from_le_bytes(len)).map_err(std::io::Error::other)?;
    let mut bytes = vec![
        0u8;
        len.checked_mul(4)
            .ok_or_else(|| std::io::Error::other("frame too long"))?
    ];
    stream.read_exact(&mut bytes)?;
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}
