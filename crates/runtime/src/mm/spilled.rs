//! The regions of the process its home spilled to other memory managers
//! (see the memory manager's `service::spill`): where each lives, and the
//! connections to its holders.
//!
//! A spilled region's pages go straight to its holders: a write-back is
//! sent to every holder of the region and counts once each of them that
//! still serves it took it; a fetch asks them in order. A holder that
//! fails or refuses is dropped from every region (with a warning): the
//! region goes on with its other copy, and is lost when it has none.

use crate::mm::excache::CacheError;
use lego_proto::{region_of, Frame, MemoryHolder, Message, ProcessId, SpilledRegion, PAGE_SIZE};
use lego_transport::{Client, ClientConfig, ClientHold, ClusterSecret, Identity, Pending};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// The connections to one holder. Leaked (one per memory manager that
/// ever held a region of the process), so a fork's hold outlives nothing.
pub struct Holder {
    pub holder: MemoryHolder,
    fetch: Client,
    writeback: Client,
    lost: AtomicBool,
}

/// The spilled regions, by number, and their holders in the order asked.
#[derive(Default)]
pub struct Spilled {
    regions: RwLock<BTreeMap<u64, Vec<&'static Holder>>>,
    holders: Mutex<HashMap<MemoryHolder, &'static Holder>>,
    /// Holders lost since the home was last told.
    lost: Mutex<Vec<String>>,
    /// Called when a holder is lost (outside every lock here), to have
    /// the home told (see `mm::repair_regions`).
    on_lost: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Asks the home where every region is now and learns it (`false`:
    /// it could not): for a region left with no holder this runtime
    /// knows, which the home may have moved without it.
    refresh: std::sync::OnceLock<Box<dyn Fn() -> bool + Send + Sync>>,
}

/// Regions a write-back reached no holder of, and why.
pub struct Missed {
    pub regions: Vec<u64>,
    pub why: String,
}

impl From<Missed> for CacheError {
    fn from(missed: Missed) -> CacheError {
        CacheError::Remote(format!(
            "lost region {}: no holder of it took a write-back ({})",
            missed.regions.first().copied().unwrap_or_default(),
            missed.why
        ))
    }
}

/// A write-back's part sent to one holder, not yet acknowledged.
pub struct SentPart {
    /// `None`: the region has no holder left.
    holder: Option<&'static Holder>,
    sent: Result<(Arc<lego_transport::Connection>, Pending), String>,
    regions: Vec<u64>,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Spilled {
    /// Learns regions the home spilled, connecting as `config` says.
    pub fn learn(&self, spilled: &[SpilledRegion], config: &ClientConfig) {
        self.learn_holders(spilled, config, true);
    }

    /// Learns where regions are, as the home answered a question
    /// (`refresh`): a holder found lost since stays out (the home hears of
    /// it from the repair thread, and replaces it).
    pub fn learn_answer(&self, spilled: &[SpilledRegion], config: &ClientConfig) {
        self.learn_holders(spilled, config, false);
    }

    /// Learns regions' holders; with `revive`, a holder known as lost
    /// serves again (the home just had it take a region).
    fn learn_holders(&self, spilled: &[SpilledRegion], config: &ClientConfig, revive: bool) {
        if spilled.is_empty() {
            return;
        }
        let mut holders = locked(&self.holders);
        let mut regions = write(&self.regions);
        for s in spilled {
            let list = s
                .holders
                .iter()
                .filter_map(|h| {
                    let holder: &'static Holder = holders.entry(h.clone()).or_insert_with(|| {
                        Box::leak(Box::new(Holder {
                            holder: h.clone(),
                            fetch: Client::new(h.addr, config.clone()),
                            writeback: Client::new(h.addr, config.clone()),
                            lost: AtomicBool::new(false),
                        }))
                    });
                    if revive {
                        holder.lost.store(false, Ordering::Relaxed);
                    }
                    (!holder.lost.load(Ordering::Relaxed)).then_some(holder)
                })
                .collect();
            regions.insert(s.region, list);
        }
    }

    /// Forgets regions the home took back: their pages are its own again.
    pub fn forget(&self, unspilled: &[u64]) {
        if unspilled.is_empty() {
            return;
        }
        let mut regions = write(&self.regions);
        for region in unspilled {
            regions.remove(region);
        }
    }

    /// Forgets every region (a new program has none).
    pub fn clear(&self) {
        write(&self.regions).clear();
    }

    /// Whether any region is spilled.
    pub fn any(&self) -> bool {
        !read(&self.regions).is_empty()
    }

    /// The holders of the region `addr` lies in, if it is spilled.
    pub fn holders_of(&self, addr: u64) -> Option<Vec<&'static Holder>> {
        read(&self.regions).get(&region_of(addr)).cloned()
    }

    /// Whether the region `addr` lies in is spilled.
    pub fn is_spilled(&self, addr: u64) -> bool {
        read(&self.regions).contains_key(&region_of(addr))
    }

    /// Drops `holder` from every region, after it failed `why`.
    fn drop_holder(&self, holder: &'static Holder, why: &str) {
        if holder.lost.swap(true, Ordering::Relaxed) {
            return;
        }
        tracing::warn!(
            "lost {} holding spilled regions ({why}): they go on with their other copies",
            holder.holder.name
        );
        for list in write(&self.regions).values_mut() {
            list.retain(|h| !std::ptr::eq(*h, holder));
        }
        locked(&self.lost).push(holder.holder.name.clone());
        if let Some(tell) = self.on_lost.get() {
            tell();
        }
    }

    /// What to call when a holder is lost (set once).
    pub fn on_lost(&self, tell: Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_lost.set(tell);
    }

    /// How to ask the home where the regions are (set once).
    pub fn on_refresh(&self, refresh: Box<dyn Fn() -> bool + Send + Sync>) {
        let _ = self.refresh.set(refresh);
    }

    /// Asks the home where the regions are: `true` if it answered.
    pub fn refresh(&self) -> bool {
        self.refresh.get().is_some_and(|refresh| refresh())
    }

    /// Whether a holder was lost since `take_lost` was last asked.
    pub fn has_lost(&self) -> bool {
        !locked(&self.lost).is_empty()
    }

    /// The holders lost since this was last asked.
    pub fn take_lost(&self) -> Vec<String> {
        std::mem::take(&mut *locked(&self.lost))
    }

    /// Puts back holders `take_lost` gave, which the home was not told.
    pub fn lost_again(&self, names: Vec<String>) {
        let mut lost = locked(&self.lost);
        for name in names {
            if !lost.contains(&name) {
                lost.push(name);
            }
        }
    }

    /// Asks the holders of `addr`'s region, in order, for `message` (a
    /// fetch); the first good answer `accept` takes is the answer.
    pub fn fetch<T>(
        &self,
        addr: u64,
        message: &Message,
        mut accept: impl FnMut(Frame) -> Result<T, String>,
    ) -> Result<T, CacheError> {
        let region = region_of(addr);
        let mut asked = false;
        loop {
            let Some(holder) = self.holders_of(addr).and_then(|h| h.first().copied()) else {
                // Moved without this runtime knowing, perhaps: the home
                // says where (once).
                if !asked && self.refresh() {
                    asked = true;
                    continue;
                }
                return Err(CacheError::Remote(format!(
                    "lost region {region} (page {addr:#x}): no holder of it is left"
                )));
            };
            let answer = holder
                .fetch
                .call(message, &[])
                .map_err(|e| e.to_string())
                .and_then(|reply| match reply.message {
                    Message::Error(e) => Err(format!("it refused: {}", e.message)),
                    _ => accept(reply),
                });
            match answer {
                Ok(value) => return Ok(value),
                Err(why) => self.drop_holder(holder, &why),
            }
        }
    }

    /// Sends the pages of `addrs` (contents `parts`, one page each) that lie in spilled
    /// regions to their holders; `home` is told the indexes of the
    /// others.
    pub fn send(
        &self,
        pid: ProcessId,
        addrs: &[u64],
        parts: &[&[u8]],
        home: &mut Vec<usize>,
    ) -> Vec<SentPart> {
        let regions = read(&self.regions);
        let mut by_holder: Vec<(&'static Holder, Vec<usize>, Vec<u64>)> = Vec::new();
        let mut orphans = Vec::new();
        for (i, &addr) in addrs.iter().enumerate() {
            let region = region_of(addr);
            let Some(holders) = regions.get(&region) else {
                home.push(i);
                continue;
            };
            for &h in holders {
                match by_holder.iter_mut().find(|(x, _, _)| std::ptr::eq(*x, h)) {
                    Some((_, pages, rs)) => {
                        pages.push(i);
                        if rs.last() != Some(&region) {
                            rs.push(region);
                        }
                    }
                    None => by_holder.push((h, vec![i], vec![region])),
                }
            }
            if holders.is_empty() && !orphans.contains(&region) {
                orphans.push(region);
            }
        }
        drop(regions);
        let mut sent: Vec<SentPart> = by_holder
            .into_iter()
            .map(|(holder, pages, regions)| {
                let message = Message::WriteBack {
                    pid,
                    addrs: pages.iter().map(|&i| addrs[i]).collect(),
                };
                let payload: Vec<&[u8]> = pages.iter().map(|&i| parts[i]).collect();
                SentPart {
                    holder: Some(holder),
                    sent: holder
                        .writeback
                        .connection()
                        .and_then(|conn| conn.send(&message, &payload).map(|p| (conn, p)))
                        .map_err(|e| e.to_string()),
                    regions,
                }
            })
            .collect();
        // Reported when the write-back is waited for.
        sent.extend(orphans.into_iter().map(|region| SentPart {
            holder: None,
            sent: Err("no holder of it is left".into()),
            regions: vec![region],
        }));
        sent
    }

    /// Waits for the parts `send` sent: `Err` naming the regions no
    /// holder took the pages of.
    pub fn wait(&self, parts: Vec<SentPart>) -> Result<(), Missed> {
        let mut took: Vec<u64> = Vec::new();
        let mut missed: Vec<(u64, String)> = Vec::new();
        for part in parts {
            let answer = part.sent.and_then(|(conn, pending)| {
                let timeout = part
                    .holder
                    .map_or(Default::default(), |h| h.writeback.request_timeout());
                conn.wait(pending, timeout)
                    .map_err(|e| e.to_string())
                    .and_then(|reply| match reply.message {
                        Message::WrittenBack => Ok(()),
                        Message::Error(e) => Err(format!("it refused: {}", e.message)),
                        other => Err(format!("it answered {}", other.kind())),
                    })
            });
            match answer {
                Ok(()) => took.extend(part.regions),
                Err(why) => {
                    if let Some(holder) = part.holder {
                        self.drop_holder(holder, &why);
                    }
                    missed.extend(part.regions.into_iter().map(|r| (r, why.clone())));
                }
            }
        }
        let mut regions: Vec<u64> = Vec::new();
        let mut why = String::new();
        for (region, reason) in missed {
            if !took.contains(&region) && !regions.contains(&region) {
                regions.push(region);
                why = reason;
            }
        }
        if regions.is_empty() {
            Ok(())
        } else {
            Err(Missed { regions, why })
        }
    }

    /// Holds every holder's connections across a fork.
    pub fn hold_for_fork(&self) -> Vec<ClientHold<'static>> {
        locked(&self.holders)
            .values()
            .flat_map(|h| [h.fetch.hold_for_fork(), h.writeback.hold_for_fork()])
            .collect()
    }

    /// In a forked child: speak as the child.
    pub fn speak_as(&self, key: &ClusterSecret, identity: &Identity) {
        for h in locked(&self.holders).values() {
            h.fetch.speak_as(key.clone(), identity.clone());
            h.writeback.speak_as(key.clone(), identity.clone());
        }
    }
}

/// A fetched page run's checks: `Pages` of at least one page, at most
/// `count`.
pub fn pages_of(reply: Frame, count: usize) -> Result<(usize, Vec<u8>), String> {
    match reply.message {
        Message::Pages { count: got }
            if got >= 1
                && got as usize <= count
                && reply.payload.len() == got as usize * PAGE_SIZE =>
        {
            Ok((got as usize, reply.payload))
        }
        other => Err(format!("it answered FetchPages with {}", other.kind())),
    }
}
