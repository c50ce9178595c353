//! `dr-ctl monitor`: print the datapath's aya-log events until interrupted.
use crate::{
    datapath::{self, Hook},
    error::{io_context, Error, Result},
    node::Node,
};

/// The programs share one log buffer; it is found through the attached
/// program's id.
pub async fn run() -> Result<()> {
    let mut node = Node::open()?;
    let ids = datapath::hook_ids(node.pins(), Hook::BridgeIngress)?.ok_or(Error::NotUp)?;
    node.unlock();
    let logger = aya_log::EbpfLogger::init_from_id(ids.program_id)
        .map_err(|e| Error::Internal(format!("reading the datapath's events: {e}")))?;
    // SAFETY: the registered fd is the logger's ring buffer, and the AsyncFd
    // owns the logger, so the fd stays open for as long as it is registered.
    let mut logger = unsafe { tokio::io::unix::AsyncFd::register(logger) }
        .map_err(|e| Error::Internal(format!("waiting for datapath events: {e}")))?;
    loop {
        let mut ready = logger
            .readable_mut()
            .await
            .map_err(io_context("waiting for datapath events"))?;
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
}
