//! Claiming a subnet in etcd: keep the key this lease holds, take over this
//! host's own previous registration, or create a free one that overlaps no
//! other and was not released by another host within the removal grace
//! period, and give it up if an overlapping claim came first.
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::{
    etcd_err,
    registry::{
        candidates, not_released, registrations, releases, subnet_key, validate, Registration,
    },
    AgentConfig, Held, Stop,
};
use crate::{
    error::{Error, Result},
    subnet::LocalSubnet,
};

/// Puts `record` at its subnet's key under `lease` if `when` all hold.
async fn put_if(
    client: &mut Client,
    prefix: &str,
    record: &Registration,
    subnet: &LocalSubnet,
    lease: i64,
    when: Vec<Compare>,
) -> Result<bool> {
    let key = subnet_key(prefix, &subnet.net);
    let value = serde_json::to_string(record).expect("serializable");
    let put = TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)));
    let resp = client
        .txn(Txn::new().when(when).and_then([put]))
        .await
        .map_err(etcd_err)?;
    Ok(resp.succeeded())
}

/// Registers this host under `lease`: the key it holds if the lease still
/// lives, its previous incarnation's (same name and address) if there is
/// one, else a free subnet that overlaps no registration. Returns the subnet.
pub(super) async fn claim(
    client: &mut Client,
    args: &AgentConfig,
    me: &Registration,
    lease: i64,
    held: Option<Held>,
) -> Result<LocalSubnet, Stop> {
    let (_, entries) = registrations(client, &args.prefix).await?;
    let released = releases(client, &args.prefix).await?;
    let (valid, _) = validate(&args.prefix, &args.cluster, &entries);
    let record = |subnet: &LocalSubnet| Registration {
        subnet: subnet.bip(),
        ..me.clone()
    };
    if let Some(v) = valid.iter().find(|v| v.lease == lease) {
        return Ok(v.subnet);
    }
    // Identity is the claimed key and its lease: a live entry with our name
    // is ours only if it is this host's (a restarted agent); another host
    // with our name is refused, never taken over.
    if let Some(v) = valid.iter().find(|v| v.registration.name == me.name) {
        if v.registration.address != me.address {
            return Err(Stop::Fatal(Error::Conflict(format!(
                "the name {:?} is held by {}'s live registration of {} (lease {:x}); give each agent its own --name",
                me.name, v.registration.address, v.subnet.net, v.lease
            ))));
        }
        if held.is_none_or(|h| h.subnet == v.subnet) {
            let current = entries[v.key].value.clone();
            let moved = put_if(
                client,
                &args.prefix,
                &record(&v.subnet),
                &v.subnet,
                lease,
                vec![Compare::value(v.key, CompareOp::Equal, current)],
            )
            .await?;
            if moved {
                return Ok(v.subnet);
            }
            return Err(Stop::Retry(Error::Conflict(format!(
                "{} changed while re-registering",
                v.key
            ))));
        }
    }
    // A host whose datapath is up keeps its subnet or stops: another host may
    // already route it, and the containers here still use it.
    let tries = match held {
        Some(h) => vec![h.subnet],
        None => candidates(args),
    };
    for subnet in tries {
        let key = subnet_key(&args.prefix, &subnet.net);
        if let Some(v) = valid
            .iter()
            .find(|v| crate::subnet::overlaps(&v.subnet.net, &subnet.net))
        {
            if held.is_some() || args.subnet.is_some() {
                return Err(Stop::Fatal(Error::Conflict(format!(
                    "subnet {} overlaps {} registered by host {:?} ({})",
                    subnet.net, v.subnet.net, v.registration.name, v.registration.address
                ))));
            }
            continue;
        }
        if entries.contains_key(&key) {
            // Taken by an entry that is not valid: never overwritten.
            continue;
        }
        let mut when = vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)];
        match released.get(&key) {
            // This host's own registration, gone while etcd or the host
            // stalled: its peers route the subnet here still.
            Some(Some(r)) if r.name == me.name && r.address == me.address => {}
            Some(holder) => {
                if held.is_some() || args.subnet.is_some() {
                    let by = holder.as_ref().map_or("another host".into(), |r| {
                        format!("host {:?} ({})", r.name, r.address)
                    });
                    return Err(Stop::Retry(Error::Conflict(format!(
                        "subnet {} was released by {by} less than the removal grace \
                         period ago, and peers may still route it there: waiting",
                        subnet.net
                    ))));
                }
                continue;
            }
            None => when.extend(not_released(&args.prefix, &key)),
        }
        let created = put_if(client, &args.prefix, &record(&subnet), &subnet, lease, when).await?;
        if !created {
            if held.is_some() || args.subnet.is_some() {
                return Err(Stop::Retry(Error::Conflict(format!(
                    "subnet {} was claimed or released meanwhile",
                    subnet.net
                ))));
            }
            continue;
        }
        // Another agent may have claimed an overlapping subnet of another
        // length meanwhile: of the two, the earlier claim keeps it.
        let (_, now) = registrations(client, &args.prefix).await?;
        let (valid, _) = validate(&args.prefix, &args.cluster, &now);
        if valid.iter().any(|v| v.key == key) {
            return Ok(subnet);
        }
        client
            .txn(
                Txn::new()
                    .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
                    .and_then([TxnOp::delete(key, None)]),
            )
            .await
            .map_err(etcd_err)?;
        if held.is_some() || args.subnet.is_some() {
            return Err(Stop::Retry(Error::Conflict(format!(
                "subnet {} lost a race to an overlapping claim",
                subnet.net
            ))));
        }
    }
    Err(Stop::Fatal(Error::Conflict(
        "no free subnet left in the cluster CIDR".into(),
    )))
}
