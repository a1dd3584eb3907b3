//! Spilling: a process's home makes room for a change that does not fit
//! its pool by moving whole regions of the change's memory to other
//! memory managers, which the monitor chooses.
//!
//! The home stays the one place that decides: it places a spilled region
//! (`PlaceRegion` to the monitor, once per copy), has each holder reserve
//! it (`HoldRegion`), and tells the holders what later changes discard,
//! copy or give up (`ChangeRegions`, `ForkRegions`) before it answers the
//! runtime, which meanwhile waits with no write-back in flight (it settles
//! them before every address-space call). The runtime sends the region's
//! pages to every holder and reads them from one; the home's backup learns
//! every spill with the change it made room for, so a failover keeps the
//! map.

use super::{lock, not_served, unknown_process, MemoryService, Mirror, Process};
use crate::pool::PagePool;
use crate::regions::{RegionError, RegionStore};
use crate::vma::{AddressSpace, Outcome};
use lego_proto::{ErrorCode, Frame};
use lego_proto::{MemoryHolder, Message, ProcessId, SpilledRegion, PAGE_SIZE, USER_END, USER_MIN};
use lego_transport::Reply;
use tracing::{info, warn};

/// Managers a region's copy may be refused by (their room changed since
/// the monitor last heard) before the spill is given up.
const HOLD_TRIES: usize = 3;

/// Pages per message when a spilled region's pages move to its holders
/// (1 MiB).
const MOVE_CHUNK: usize = 256;

/// What a change that did not fit is short of, and what could relieve it.
pub(super) struct SpillPlan {
    /// Bytes of commit charge the home lacks.
    pub short: u64,
    /// The regions that could spill, best first, each with the charge
    /// spilling it relieves.
    pub candidates: Vec<(u64, u64)>,
}

impl MemoryService {
    /// What spilling would have to relieve for `op`, which did not fit, to
    /// fit: a dry run of it on the shape of `space` (no pages), against
    /// the room `pool` has. `None` when spilling cannot make it fit.
    pub(super) fn spill_plan(
        space: &AddressSpace,
        pool: &PagePool,
        refused: impl Fn(&Outcome) -> bool,
        apply: impl FnOnce(&mut AddressSpace, &mut PagePool) -> Outcome,
    ) -> Option<SpillPlan> {
        let mut scratch = PagePool::new(u64::MAX);
        let mut after = space.shape(&mut scratch);
        let dry = apply(&mut after, &mut scratch);
        if refused(&dry) {
            return None;
        }
        let room = pool.capacity_bytes().saturating_sub(pool.committed());
        let short = after
            .committed()
            .saturating_sub(space.committed())
            .saturating_sub(room);
        if short == 0 {
            return None;
        }
        let touched: Vec<(u64, u64)> = dry
            .changes
            .iter()
            .map(|c| (c.start, c.end))
            .chain(dry.moves.iter().map(|m| (m.to, m.to + m.len)))
            .collect();
        let candidates = space.spill_candidates(&after, &touched);
        let all: u64 = candidates.iter().map(|&(_, charge)| charge).sum();
        (all >= short).then_some(SpillPlan { short, candidates })
    }

    /// Has regions of process `pid` held elsewhere, from the best of
    /// `plan`'s candidates on, until the home and its `backup` (whose
    /// shortage is taken to be the home's: it mirrors the address space)
    /// are each relieved of what `plan` says is short. Each region gets
    /// `copies` holders, placed by the monitor and reserved there, on
    /// managers other than the home and its backup; when only those two
    /// have room for a region's second copy, one of them keeps it (the
    /// backup only once `backup_ready`, a complete copy of the pages), which
    /// relieves the other, and from then on the most charged regions go
    /// first (each more than half charged). So three managers hold a
    /// process none of them could. All or nothing: an empty answer holds
    /// nothing.
    pub(super) fn place_spills(
        &self,
        pid: ProcessId,
        backup: Option<&MemoryHolder>,
        backup_ready: bool,
        copies: usize,
        plan: &SpillPlan,
    ) -> Vec<SpilledRegion> {
        let Some((me, monitor)) = self.joined.get().cloned() else {
            return Vec::new();
        };
        let tree = lock(&self.trees).get(&pid).copied().unwrap_or(pid);
        let short = plan.short as i128;
        // What the home and its backup gave up so far (a region kept by
        // one costs it the rest of the region's reservation).
        let (mut home, mut backup_relief) = (0i128, 0i128);
        let enough = |home: i128, backup: i128| home >= short && (copies < 2 || backup >= short);
        let whole = i128::from(lego_proto::REGION_SIZE);
        // Kept by one of the two, a region relieves the other of its charge
        // and costs the keeper the rest of the region: worth it only when
        // more than half charged, and (the backup not being ready to keep
        // one) not while the home itself is short.
        let worth_keeping =
            |charge: i128, home: i128| 2 * charge > whole && (backup_ready || home >= short);
        // Whether regions still find all their copies room outside the
        // home's side: once one does not, none after it will (each needs
        // the same room), and the most charged are taken first from then on.
        let mut outside = true;
        let mut queue = plan.candidates.clone();
        let mut next = 0;
        let mut placed: Vec<SpilledRegion> = Vec::new();
        while next < queue.len() && !enough(home, backup_relief) {
            let (region, charge) = queue[next];
            next += 1;
            let charge = i128::from(charge);
            if !outside && !worth_keeping(charge, home) {
                break;
            }
            let mut holders: Vec<MemoryHolder> = Vec::new();
            for _ in 0..if outside { copies } else { 1 } {
                let mut except: Vec<String> = vec![me.name.clone()];
                except.extend(backup.map(|b| b.name.clone()));
                except.extend(holders.iter().map(|h| h.name.clone()));
                match self.place_one(monitor, pid, tree, region, except) {
                    Some(holder) => holders.push(holder),
                    None => break,
                }
            }
            if holders.len() == copies {
                home += charge;
                backup_relief += charge;
                placed.push(SpilledRegion { region, holders });
                continue;
            }
            let Some(backup) = backup.filter(|_| !holders.is_empty()) else {
                // No room outside the home's side at all.
                self.give_up_spills(pid, &[SpilledRegion { region, holders }]);
                break;
            };
            if outside {
                outside = false;
                queue[next..].sort_unstable_by_key(|&(r, c)| std::cmp::Reverse((c, r)));
                if !worth_keeping(charge, home) {
                    self.give_up_spills(pid, &[SpilledRegion { region, holders }]);
                    continue;
                }
            }
            // The home's side keeps the second copy: whichever of the two
            // still needs less relief.
            if backup_ready && home <= backup_relief {
                holders.push(backup.clone());
                home += charge;
                backup_relief += charge - whole;
            } else {
                holders.push(me.clone());
                backup_relief += charge;
                home += charge - whole;
            }
            placed.push(SpilledRegion { region, holders });
        }
        if !enough(home, backup_relief) {
            warn!(
                pid = format_args!("{pid:#x}"),
                "the memory managers have room for {} regions of the {} short: the call \
                 that needed them fails with ENOMEM",
                placed.len(),
                plan.short
            );
            self.give_up_spills(pid, &placed);
            return Vec::new();
        }
        info!(
            pid = format_args!("{pid:#x}"),
            "spilled {} regions: {}",
            placed.len(),
            placed
                .iter()
                .map(|s| format!(
                    "{} on {}",
                    s.region,
                    s.holders
                        .iter()
                        .map(|h| h.name.as_str())
                        .collect::<Vec<_>>()
                        .join("+")
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        placed
    }

    /// Gives region `region` of process `pid`, which this manager keeps a
    /// copy of (the home or its backup, see `place_spills`) and holds in
    /// `held` already, the pages `space` stores of it, shared (`space`
    /// then drops its own).
    pub(super) fn adopt_region_pages(
        held: &mut RegionStore,
        pool: &mut PagePool,
        space: &AddressSpace,
        pid: ProcessId,
        region: u64,
    ) -> Result<(), RegionError> {
        let (start, end) = (
            region * lego_proto::REGION_SIZE,
            (region + 1) * lego_proto::REGION_SIZE,
        );
        for (addr, id) in space.pages_in(start, end, usize::MAX) {
            held.adopt(pool, pid, addr, id)?;
        }
        Ok(())
    }

    /// One new holder of region `region` of process `pid` (tree `tree`),
    /// none of `except`: placed by the monitor at `monitor`, reserved
    /// there (the next is asked when one refuses, a few times).
    fn place_one(
        &self,
        monitor: std::net::SocketAddr,
        pid: ProcessId,
        tree: ProcessId,
        region: u64,
        mut except: Vec<String>,
    ) -> Option<MemoryHolder> {
        for _ in 0..HOLD_TRIES {
            let ask = Message::PlaceRegion {
                pid,
                region,
                except: except.clone(),
            };
            let holder = match self.links.ask_monitor(monitor, &ask) {
                Ok(Message::RegionPlaced(holder)) => holder,
                Ok(other) => {
                    warn!("the monitor answered PlaceRegion with {}", other.kind());
                    return None;
                }
                Err(why) => {
                    info!("region {region} of process {pid:#x} not placed: {why}");
                    return None;
                }
            };
            let hold = Message::HoldRegion { pid, tree, region };
            match self.tell_holder(&holder, &hold) {
                Ok(()) => return Some(holder),
                Err(why) => {
                    info!(
                        "{} cannot hold region {region} of process {pid:#x}: {why}",
                        holder.name
                    );
                    except.push(holder.name);
                }
            }
        }
        None
    }

    /// The runtime of process `pid` lost the holders named in `lost`:
    /// each region of `space` one of them held gets a new holder, copied
    /// from a survivor (`CopyRegion`) while the runtime waits, and the
    /// home's map follows. The answer lists every region that had a lost
    /// holder, as it is held now. The home's backup keeps the old map (a
    /// failover then loses the new copies' bookkeeping, not pages).
    pub(super) fn replace_holders(
        &self,
        pid: ProcessId,
        space: &mut AddressSpace,
        backup: Option<&MemoryHolder>,
        lost: &[String],
    ) -> Vec<SpilledRegion> {
        let Some((me, monitor)) = self.joined.get().cloned() else {
            return Vec::new();
        };
        let tree = lock(&self.trees).get(&pid).copied().unwrap_or(pid);
        let mut moved = Vec::new();
        for s in space.spilled_regions() {
            if !s.holders.iter().any(|h| lost.contains(&h.name)) {
                continue;
            }
            let mut holders: Vec<MemoryHolder> = s
                .holders
                .iter()
                .filter(|h| !lost.contains(&h.name))
                .cloned()
                .collect();
            if let Some(survivor) = holders.first().cloned() {
                let mut except: Vec<String> = vec![me.name.clone()];
                except.extend(backup.map(|b| b.name.clone()));
                except.extend(s.holders.iter().map(|h| h.name.clone()));
                if let Some(new) = self.place_one(monitor, pid, tree, s.region, except) {
                    // The runtime waits: nothing to pass on meanwhile.
                    let copy = Message::CopyRegion {
                        pid,
                        region: s.region,
                        to: new.clone(),
                        mirror: false,
                    };
                    let started = std::time::Instant::now();
                    match self.tell_holder(&survivor, &copy) {
                        Ok(()) => {
                            info!(
                                pid = format_args!("{pid:#x}"),
                                "region {} copied from {} to {} in {:?}",
                                s.region,
                                survivor.name,
                                new.name,
                                started.elapsed()
                            );
                            holders.push(new);
                        }
                        Err(why) => {
                            warn!(
                                "region {} of process {pid:#x}: copying it from {} to {} \
                                 failed: {why}",
                                s.region, survivor.name, new.name
                            );
                            self.give_up_spills(
                                pid,
                                &[SpilledRegion {
                                    region: s.region,
                                    holders: vec![new],
                                }],
                            );
                        }
                    }
                }
            }
            let mut pool = lock(&self.pool);
            // Already spilled: only its holders change.
            let _ = space.spill(&mut pool, s.region, holders.clone());
            drop(pool);
            // A holder reported lost that still runs gives the region up,
            // off this call's time (a dead one takes a while to fail).
            let gone = SpilledRegion {
                region: s.region,
                holders: s
                    .holders
                    .iter()
                    .filter(|h| lost.contains(&h.name))
                    .cloned()
                    .collect(),
            };
            if let Some(me) = self.me.get().and_then(|w| w.upgrade()) {
                let _ = std::thread::Builder::new()
                    .name("give up region".into())
                    .spawn(move || me.give_up_spills(pid, &[gone]));
            }
            moved.push(SpilledRegion {
                region: s.region,
                holders,
            });
        }
        moved
    }

    /// Tells the backup of `process` (`pid`) the new holders of `moved`
    /// (`Respill`, passed on like a change).
    pub(super) fn respill(&self, pid: ProcessId, process: &Process, moved: Vec<SpilledRegion>) {
        let (Some(link), false) = (&process.rep.backup, moved.is_empty()) else {
            return;
        };
        let tree = lock(&self.trees).get(&pid).copied().unwrap_or(pid);
        let respill = Frame {
            id: 0,
            message: Message::Respill {
                pid,
                regions: moved,
            },
            payload: Vec::new(),
        };
        if let Some(sent) = link.send(pid, tree, process.rep.epoch, &respill) {
            if let Err(why) = link.wait(sent) {
                warn!("process {pid:#x}: the backup missed new region holders: {why}");
            }
        }
    }

    /// The monitor's `MoveRegions`: every region of process `pid` held by
    /// `from` gets a new holder, copied from another copy while the
    /// program runs (that copy passes the runtime's pages on to the new
    /// holder until the runtime learns of it, see `CopyRegion`); `from`
    /// then gives its copy up, and the runtime, refused or failing there,
    /// asks the home (`RegionsLost`) and learns the new holders. Faults on
    /// the home's own pages wait meanwhile (about 0.1 s per region).
    pub(super) fn move_regions(&self, pid: ProcessId, from: &str) -> Reply {
        let Some(slot) = self.slot(pid) else {
            return unknown_process(pid);
        };
        let mut guard = lock(&slot);
        let Some(process) = guard.as_mut().filter(|p| !p.rep.is_backup) else {
            return not_served(&guard, pid);
        };
        let Some((me, monitor)) = self.joined.get().cloned() else {
            return Message::error(ErrorCode::Unsupported, "this memory manager has not joined")
                .into();
        };
        let backup = process.rep.backup_or_copy();
        let tree = lock(&self.trees).get(&pid).copied().unwrap_or(pid);
        let mut moved = Vec::new();
        let mut failed = Vec::new();
        let mut leaving = None;
        for s in process.space.spilled_regions() {
            let Some(off) = s.holders.iter().find(|h| h.name == from).cloned() else {
                continue;
            };
            leaving = Some(off);
            let mut holders: Vec<MemoryHolder> = s
                .holders
                .iter()
                .filter(|h| h.name != from)
                .cloned()
                .collect();
            // A region moved lately, the runtime not knowing where yet: it
            // writes to the copy passing its pages on (the source). Off
            // the new copy, the source passes them on to the next one
            // instead; off the source, the new copy is copied from and
            // passes on what it is passed (the runtime, refused by the
            // source, asks the home where the region is and sends its
            // write-back again).
            let pending = process.mirrors.iter().rposition(|m| m.region == s.region);
            let (source, retarget) = match pending.map(|i| &process.mirrors[i]) {
                Some(m) if m.source.name == from => (m.target.clone(), false),
                Some(m) => (m.source.clone(), true),
                None => match holders.first() {
                    Some(h) => (h.clone(), false),
                    None => {
                        failed.push(format!("region {} has no other copy", s.region));
                        continue;
                    }
                },
            };
            let mut except: Vec<String> = vec![me.name.clone()];
            except.extend(backup.as_ref().map(|b| b.name.clone()));
            except.extend(s.holders.iter().map(|h| h.name.clone()));
            let Some(new) = self.place_one(monitor, pid, tree, s.region, except) else {
                failed.push(format!(
                    "no other memory manager can take region {}",
                    s.region
                ));
                continue;
            };
            let copy = Message::CopyRegion {
                pid,
                region: s.region,
                to: new.clone(),
                mirror: true,
            };
            let started = std::time::Instant::now();
            if let Err(why) = self.tell_holder(&source, &copy) {
                self.give_up_spills(
                    pid,
                    &[SpilledRegion {
                        region: s.region,
                        holders: vec![new.clone()],
                    }],
                );
                failed.push(format!(
                    "copying region {} from {} to {} failed: {why}",
                    s.region, source.name, new.name
                ));
                continue;
            }
            info!(
                pid = format_args!("{pid:#x}"),
                "region {} moved off {from} to {} (copied from {} in {:?})",
                s.region,
                new.name,
                source.name,
                started.elapsed()
            );
            holders.push(new.clone());
            let _ = process
                .space
                .spill(&mut lock(&self.pool), s.region, holders.clone());
            match pending {
                Some(i) if retarget => process.mirrors[i].target = new.clone(),
                _ => process.mirrors.push(Mirror {
                    region: s.region,
                    source,
                    target: new.clone(),
                }),
            }
            let region = SpilledRegion {
                region: s.region,
                holders,
            };
            // The backup knows before the leaving copy goes.
            self.respill(pid, process, vec![region.clone()]);
            moved.push(region);
        }
        if let Some(leaving) = leaving {
            // Off this call's time: every region of the process it had,
            // when all are elsewhere now (any left over from an earlier
            // give-up too), else those that moved.
            let release: Vec<u64> = moved.iter().map(|m| m.region).collect();
            let all = failed.is_empty();
            let give_up = Message::ChangeRegions {
                pid,
                discard: Vec::new(),
                release,
                all,
            };
            if let Some(me) = self.me.get().and_then(|w| w.upgrade()) {
                let _ = std::thread::Builder::new()
                    .name("give up regions".into())
                    .spawn(move || {
                        if let Err(why) = me.tell_holder(&leaving, &give_up) {
                            info!(
                                "{} did not give up regions of process {pid:#x}: {why}",
                                leaving.name
                            );
                        }
                    });
            }
        }
        if failed.is_empty() {
            Message::RegionsMoved(moved).into()
        } else {
            Message::error(
                ErrorCode::Internal,
                format!(
                    "process {pid:#x}: {} regions moved off {from}, not: {}",
                    moved.len(),
                    failed.join("; ")
                ),
            )
            .into()
        }
    }

    /// The runtime of `process` (`pid`), with nothing in flight, learns
    /// every region's holders now: the holders passing its pages on to
    /// regions' new holders stop. One whose passing on failed meanwhile
    /// takes that new holder out of the map (its copy misses a write).
    pub(super) fn end_mirrors(&self, pid: ProcessId, process: &mut Process) {
        let mut dropped = Vec::new();
        for m in std::mem::take(&mut process.mirrors) {
            let end = Message::EndMirror {
                pid,
                region: m.region,
            };
            match self.links.to(&m.source).map(|link| link.ask(&end)) {
                Some(Ok(Message::Error(e))) if e.code == ErrorCode::Internal => {
                    warn!(
                        "process {pid:#x}: {} missed pages of region {}: {}",
                        m.target.name, m.region, e.message
                    );
                    dropped.push(m);
                }
                Some(Ok(_)) => {}
                // Unreachable: a failure there gave the new copy up itself.
                _ => info!(
                    "{} may keep passing pages of region {} of process {pid:#x} on",
                    m.source.name, m.region
                ),
            }
        }
        let mut changed = Vec::new();
        for m in dropped {
            let Some(s) = process
                .space
                .spilled_regions()
                .into_iter()
                .find(|s| s.region == m.region)
            else {
                continue;
            };
            let holders: Vec<MemoryHolder> = s
                .holders
                .into_iter()
                .filter(|h| h.name != m.target.name)
                .collect();
            let _ = process
                .space
                .spill(&mut lock(&self.pool), m.region, holders.clone());
            changed.push(SpilledRegion {
                region: m.region,
                holders,
            });
        }
        self.respill(pid, process, changed);
    }

    /// Passes the pages `pages` (indexes into `addrs`, one page of
    /// `payload` each) of process `pid`, written back here, on to `to`,
    /// a holder their regions are being copied to. Should that fail, the
    /// copy there is given up (it would serve pages older than the
    /// runtime's), the pages are passed on no more, and the home hears of
    /// it (`CopyRegion`, `EndMirror` fail); `Err` says so.
    pub(super) fn mirror_pages(
        &self,
        pid: ProcessId,
        to: &MemoryHolder,
        addrs: &[u64],
        payload: &[u8],
        pages: &[usize],
    ) -> Result<(), String> {
        let mut data = Vec::with_capacity(pages.len() * PAGE_SIZE);
        for &i in pages {
            data.extend_from_slice(&payload[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]);
        }
        let message = Message::MirrorPages {
            pid,
            addrs: pages.iter().map(|&i| addrs[i]).collect(),
        };
        let Err(why) = self.tell_holder_with(to, &message, &data) else {
            return Ok(());
        };
        let mut regions: Vec<u64> = pages
            .iter()
            .map(|&i| lego_proto::region_of(addrs[i]))
            .collect();
        regions.dedup();
        warn!(
            "cannot pass pages of process {pid:#x} on to {}, which regions {regions:?} are \
             copied to: {why}; it gives them up",
            to.name
        );
        {
            let mut held = lock(&self.regions);
            for &region in &regions {
                held.break_mirror(pid, region);
            }
        }
        let gone: Vec<SpilledRegion> = regions
            .into_iter()
            .map(|region| SpilledRegion {
                region,
                holders: vec![to.clone()],
            })
            .collect();
        self.give_up_spills(pid, &gone);
        Err(format!("passing its pages on to {} failed: {why}", to.name))
    }

    /// Copies this manager's pages of region `region` of process `pid` to
    /// `to` (a new holder of it), a chunk at a time.
    pub(super) fn copy_region(
        &self,
        pid: ProcessId,
        region: u64,
        to: &MemoryHolder,
    ) -> Result<(), String> {
        let mut from = region * lego_proto::REGION_SIZE;
        loop {
            let chunk = {
                let regions = lock(&self.regions);
                let pool = lock(&self.pool);
                regions.pages_from(&pool, pid, region, from, MOVE_CHUNK)
            };
            let Some(&(last, _)) = chunk.last() else {
                return Ok(());
            };
            let mut payload = Vec::with_capacity(chunk.len() * PAGE_SIZE);
            for (_, page) in &chunk {
                payload.extend_from_slice(page);
            }
            let message = Message::RegionPages {
                pid,
                addrs: chunk.iter().map(|(a, _)| *a).collect(),
            };
            self.tell_holder_with(to, &message, &payload)?;
            from = last + PAGE_SIZE as u64;
        }
    }

    /// Gives the holders of `placed`, regions about to spill, the pages of
    /// them `space` stores (the runtime, waiting for the call, has none in
    /// flight), but for the home and its `backup`, which keep the pages
    /// they have. The pages are read a chunk at a time, under the pool's
    /// lock only while copied out.
    pub(super) fn move_to_holders(
        &self,
        pid: ProcessId,
        space: &AddressSpace,
        backup: Option<&MemoryHolder>,
        placed: Vec<SpilledRegion>,
    ) -> Result<Vec<SpilledRegion>, (Vec<SpilledRegion>, String)> {
        let me = self.joined.get().map(|(me, _)| me.name.clone());
        let elsewhere = |h: &&MemoryHolder| {
            Some(&h.name) != me.as_ref() && Some(&h.name) != backup.map(|b| &b.name)
        };
        for s in &placed {
            if !s.holders.iter().any(|h| elsewhere(&h)) {
                continue;
            }
            let (start, end) = (
                s.region * lego_proto::REGION_SIZE,
                (s.region + 1) * lego_proto::REGION_SIZE,
            );
            let mut from = start;
            loop {
                let (addrs, payload) = {
                    let pool = lock(&self.pool);
                    let chunk = space.pages_in(from, end, MOVE_CHUNK);
                    let mut payload = Vec::with_capacity(chunk.len() * PAGE_SIZE);
                    for (_, id) in &chunk {
                        payload.extend_from_slice(pool.get(*id));
                    }
                    (chunk.iter().map(|(a, _)| *a).collect::<Vec<u64>>(), payload)
                };
                let Some(&last) = addrs.last() else {
                    break;
                };
                for holder in s.holders.iter().filter(elsewhere) {
                    let message = Message::RegionPages {
                        pid,
                        addrs: addrs.clone(),
                    };
                    if let Err(why) = self.tell_holder_with(holder, &message, &payload) {
                        return Err((placed.clone(), format!("{}: {why}", holder.name)));
                    }
                }
                from = last + PAGE_SIZE as u64;
            }
        }
        Ok(placed)
    }

    /// Gives up spilled regions held for process `pid` (a change that
    /// still did not fit).
    pub(super) fn give_up_spills(&self, pid: ProcessId, spilled: &[SpilledRegion]) {
        let mut by_holder: Vec<(MemoryHolder, Vec<u64>)> = Vec::new();
        for s in spilled {
            for holder in &s.holders {
                match by_holder.iter_mut().find(|(h, _)| h == holder) {
                    Some((_, regions)) => regions.push(s.region),
                    None => by_holder.push((holder.clone(), vec![s.region])),
                }
            }
        }
        for (holder, release) in by_holder {
            let message = Message::ChangeRegions {
                pid,
                discard: Vec::new(),
                release,
                all: false,
            };
            if let Err(why) = self.tell_holder(&holder, &message) {
                warn!(
                    "cannot give up regions of process {pid:#x} on {}: {why}",
                    holder.name
                );
            }
        }
    }

    /// Tells the holders of `space`'s spilled regions that `discard`
    /// ranges lost their contents.
    pub(super) fn discard_spilled(
        &self,
        pid: ProcessId,
        space: &AddressSpace,
        discard: &[(u64, u64)],
    ) {
        let mut by_holder: Vec<(MemoryHolder, Vec<(u64, u64)>)> = Vec::new();
        for &(start, end) in discard {
            for (holder, _) in space.holders_in(start, end) {
                match by_holder.iter_mut().find(|(h, _)| *h == holder) {
                    Some((_, ranges)) => ranges.push((start, end)),
                    None => by_holder.push((holder, vec![(start, end)])),
                }
            }
        }
        for (holder, discard) in by_holder {
            let message = Message::ChangeRegions {
                pid,
                discard,
                release: Vec::new(),
                all: false,
            };
            // A holder that missed it keeps pages no one reads (the
            // runtime forgot them) until the region is given up.
            if let Err(why) = self.tell_holder(&holder, &message) {
                warn!(
                    "cannot discard pages of process {pid:#x} on {}: {why}",
                    holder.name
                );
            }
        }
    }

    /// Tells every holder of `space`'s regions that process `pid` gives
    /// them all up (it ended, or runs a new program).
    pub(super) fn release_spilled(&self, pid: ProcessId, space: &AddressSpace) {
        for (holder, _) in space.holders_in(USER_MIN, USER_END) {
            let message = Message::ChangeRegions {
                pid,
                discard: Vec::new(),
                release: Vec::new(),
                all: true,
            };
            if let Err(why) = self.tell_holder(&holder, &message) {
                warn!(
                    "cannot give up the regions of process {pid:#x} on {}: {why}",
                    holder.name
                );
            }
        }
    }

    /// Has every holder of `space`'s regions hold them for `child` too (a
    /// fork). All or nothing: `Err` names the holder that refused, and
    /// leaves nothing held for the child.
    pub(super) fn fork_spilled(
        &self,
        parent: ProcessId,
        child: ProcessId,
        space: &AddressSpace,
    ) -> Result<(), String> {
        let holders = space.holders_in(USER_MIN, USER_END);
        for (i, (holder, regions)) in holders.iter().enumerate() {
            let message = Message::ForkRegions {
                parent,
                child,
                regions: regions.clone(),
            };
            if let Err(why) = self.tell_holder(holder, &message) {
                for (done, _) in &holders[..i] {
                    let undo = Message::ChangeRegions {
                        pid: child,
                        discard: Vec::new(),
                        release: Vec::new(),
                        all: true,
                    };
                    let _ = self.tell_holder(done, &undo);
                }
                return Err(format!("{}: {why}", holder.name));
            }
        }
        Ok(())
    }

    /// Sends `message` to `holder` and waits for it to be done.
    pub(super) fn tell_holder(
        &self,
        holder: &MemoryHolder,
        message: &Message,
    ) -> Result<(), String> {
        self.tell_holder_with(holder, message, &[])
    }

    /// Sends `message` with `payload` to `holder` and waits for it to be
    /// done.
    fn tell_holder_with(
        &self,
        holder: &MemoryHolder,
        message: &Message,
        payload: &[u8],
    ) -> Result<(), String> {
        let link = self
            .links
            .to(holder)
            .ok_or("this memory manager has no cluster secret")?;
        let sent = link
            .send_message(message, &[payload])
            .ok_or_else(|| format!("{} cannot be reached", holder.name))?;
        link.wait(sent)
    }
}

/// Whether any spilled region of `process` needs telling anything.
pub(super) fn has_spills(process: &Process) -> bool {
    process.space.spilled().next().is_some()
}

/// The ranges a call's `outcome` discarded the contents of.
pub(super) fn discarded(outcome: &Outcome) -> Vec<(u64, u64)> {
    outcome
        .changes
        .iter()
        .filter(|c| c.discard)
        .map(|c| (c.start, c.end))
        .collect()
}
